"""Subset schemas for the Prometheus Operator kinds under deploy/ (no shared schema exists for
them): strict schemas of the fields these manifests may use, after the CRDs of prometheus-operator
v0.8x (monitoring.coreos.com/v1 ServiceMonitor and PrometheusRule). Unknown fields and wrong types
fail, as the API server's structural schema would refuse them."""

from __future__ import annotations

from typing import Any

_STRING = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


_METADATA = _strict({"name": _STRING, "namespace": _STRING, "labels": _LABELS, "annotations": _LABELS})


def _top(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _strict(
        {
            "apiVersion": {"enum": ["monitoring.coreos.com/v1"]},
            "kind": {"enum": [kind]},
            "metadata": _METADATA,
            "spec": spec,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )


_SELECTOR = _strict(
    {
        "matchLabels": _LABELS,
        "matchExpressions": {
            "type": "array",
            "items": _strict(
                {"key": _STRING, "operator": _STRING, "values": {"type": "array", "items": _STRING}},
                ("key", "operator"),
            ),
        },
    }
)

_ENDPOINT = _strict(
    {
        "port": _STRING,
        "targetPort": {"type": ["string", "integer"]},
        "path": _STRING,
        "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
        "honorTimestamps": {"type": "boolean"},
        "params": {"type": "object"},
        "relabelings": {"type": "array", "items": {"type": "object"}},
        "metricRelabelings": {"type": "array", "items": {"type": "object"}},
    }
)

_RULE = _strict(
    {
        "alert": _STRING,
        "record": _STRING,
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _LABELS,
        "annotations": _LABELS,
    },
    ("expr",),
)

MONITORING_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _top(
        "ServiceMonitor",
        _strict(
            {
                "jobLabel": _STRING,
                "targetLabels": {"type": "array", "items": _STRING},
                "podTargetLabels": {"type": "array", "items": _STRING},
                "selector": _SELECTOR,
                "namespaceSelector": _strict(
                    {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STRING}}
                ),
                "endpoints": {"type": "array", "items": _ENDPOINT},
                "sampleLimit": {"type": "integer", "minimum": 0},
            },
            ("selector",),
        ),
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _top(
        "PrometheusRule",
        _strict(
            {
                "groups": {
                    "type": "array",
                    "items": _strict(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "limit": {"type": "integer"},
                            "partial_response_strategy": _STRING,
                            "rules": {"type": "array", "items": _RULE},
                        },
                        ("name",),
                    ),
                }
            }
        ),
    ),
}
