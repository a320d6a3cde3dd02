"""The OpenAI-compatible LLM gateway (issue 16): agents speak to their model through the fabric."""
