"""The audit trail: who did what, in which tenant and mode, with what request and response."""
