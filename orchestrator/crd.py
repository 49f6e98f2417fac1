"""The Sweep CRD, generated from the spec model so the file and the apiserver never drift.

pydantic's JSON Schema is turned into a Kubernetes *structural* schema: `$ref`s inlined,
`anyOf [X, null]` folded into `nullable`, JSON-Schema-2020 exclusive bounds turned into
OpenAPI v3.0's boolean form, titles dropped. Rules that OpenAPI cannot say (uniqueness, the
grid's immutability, references between fields) are CEL `x-kubernetes-validations`, each
with a message naming the field, like `ladder validate`'s. `k8s/crd/` holds the rendered
file; a test fails when it and the model disagree (`ladder crd > k8s/crd/...` to refresh).
"""

from __future__ import annotations

from typing import Any

from pydantic.alias_generators import to_camel

from orchestrator.core.spec import (
    API_VERSION,
    BUILTIN_DATASETS,
    BUILTIN_PREFIX,
    KIND,
    MAX_LIST,
    MAX_SWEEP_NAME,
    MAX_TEXT,
    PAPER_ADAPTERS,
    SWEEP_NAME_RE,
    Axes,
    SweepSpec,
)

GROUP, VERSION = API_VERSION.split("/")
PLURAL, SINGULAR, SHORT_NAME = "sweeps", "sweep", "sw"
CRD_NAME = f"{PLURAL}.{GROUP}"

_DROP = {"title", "$defs", "default_factory"}
# The fields that define the trial ids (see the immutability rule below).
GRID_FIELDS = ("ladder", "methods", "adapters", "axes")



def _grid_size_rule() -> str:
    """CEL for `SweepSpec.potential_trials`, with the model's defaults for omitted fields
    (the apiserver fills in only the defaults the schema states; list defaults are not)."""
    default_methods = SweepSpec.model_fields["methods"].get_default(call_default_factory=True)
    default_pairs = sum(len(a.alphas) for a in PAPER_ADAPTERS)
    default_adapter_methods = sum(1 for m in default_methods if m.uses_adapters)
    default_full = int(any(not m.uses_adapters for m in default_methods))
    full = f"(has(self.methods) ? ('full' in self.methods ? 1 : 0) : {default_full})"
    adapter_methods = (
        f"(has(self.methods) ? size(self.methods.filter(m, m != 'full')) "
        f": {default_adapter_methods})"
    )
    pairs = (
        f"(has(self.adapters) ? self.adapters.map(a, size(a.alphas)).sum() : {default_pairs})"
    )
    points = " * ".join(
        f"(has(self.axes) && has(self.axes.{axis}) ? size(self.axes.{axis}) : 1)"
        for axis in (to_camel(name) for name in Axes.model_fields)
    )
    max_trials = SweepSpec.model_fields["max_trials"].default
    return (
        f"({full} + {adapter_methods} * {pairs}) * {points} * size(self.ladder) "
        f"<= (has(self.maxTrials) ? self.maxTrials : {max_trials})"
    )


# CEL rules on `spec`, as (rule, message, fieldPath).
SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": "self.ladder.all(m, self.ladder.exists_one(n, n == m))",
        "message": "ladder: a model appears twice in the ladder",
        "fieldPath": ".ladder",
    },
    {
        "rule": "!has(self.methods) || self.methods.all(m, self.methods.exists_one(n, n == m))",
        "message": "methods: methods must not repeat",
        "fieldPath": ".methods",
    },
    {
        "rule": "!has(self.adapters) || "
        "self.adapters.all(a, self.adapters.exists_one(b, b.rank == a.rank))",
        "message": "adapters: each rank may appear once",
        "fieldPath": ".adapters",
    },
    {
        "rule": "!has(self.resources) || !has(self.resources.overrides) || "
        "self.resources.overrides.all(k, k in self.ladder)",
        "message": "resources.overrides: names a model that is not in the ladder",
        "fieldPath": ".resources.overrides",
    },
    {
        "rule": "!has(self.methods) || !self.methods.exists(m, m != 'full') || "
        "!has(self.adapters) || size(self.adapters) > 0",
        "message": "adapters: lora and qlora need at least one {rank, alphas} pair",
        "fieldPath": ".adapters",
    },
    {
        # Oversized grids: the same count as `SweepSpec.potential_trials`.
        "rule": _grid_size_rule(),
        "message": "maxTrials: the grid has more potential trials than maxTrials; shrink the "
        "grid or raise maxTrials",
        "fieldPath": ".maxTrials",
    },
    {
        # The grid defines the trial ids; changing it under a running sweep would orphan them.
        # Each field may be left out (the spec's default applies), so compare presence too.
        "rule": " && ".join(
            f"(has(self.{key}) ? has(oldSelf.{key}) && self.{key} == oldSelf.{key} "
            f": !has(oldSelf.{key}))"
            for key in GRID_FIELDS
        ),
        "message": "the grid (ladder, methods, adapters, axes) is immutable; create a new Sweep",
    },
]
ALPHA_RULE = {
    "rule": "self.alphas.all(a, self.alphas.exists_one(b, b == a))",
    "message": "alphas must not repeat",
    "fieldPath": ".alphas",
}
# `targetModules` is a string or a list of strings: no single structural type, so the schema
# keeps it untyped (`x-kubernetes-preserve-unknown-fields`). CEL cannot see an untyped value
# ("unable to convert structural schema to CEL declarations"), but OpenAPI's keywords apply to
# the values of their own type only: a string is checked by the length bounds, a list by the
# item bounds and `items`. What stays unsaid is the type itself (a number or a mapping is
# accepted by the apiserver): the controller refuses it with the same model.
TARGET_MODULES_BOUNDS: dict[str, Any] = {
    "minLength": 1,
    "maxLength": MAX_TEXT,
    "minItems": 1,
    "maxItems": MAX_LIST,
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
}
# `Dataset._known_builtin`: a `builtin:` source must name a generator the worker has.
DATASET_RULE = {
    "rule": f"!has(self.source) || !self.source.startsWith('{BUILTIN_PREFIX}') || "
    f"self.source in "
    f"{[BUILTIN_PREFIX + name for name in BUILTIN_DATASETS]}",
    "message": "unknown built-in dataset (known: "
    + ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_DATASETS) + ")",
    "fieldPath": ".source",
}
ROOT_RULES = [
    {
        "rule": f"size(self.metadata.name) <= {MAX_SWEEP_NAME}",
        "message": f"metadata.name: at most {MAX_SWEEP_NAME} characters (it prefixes RayJob names)",
    },
    {
        # The apiserver allows dots in a custom resource's name; RayJob names and label values
        # built from it do not.
        "rule": f"self.metadata.name.matches('{SWEEP_NAME_RE.pattern}')",
        "message": "metadata.name: must be a DNS label (lowercase letters, digits, '-')",
    },
]

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Done", "type": "integer", "jsonPath": ".status.trials.done"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.trials.total"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.trials.running"},
    {"name": "OOM", "type": "integer", "jsonPath": ".status.ooms"},
    {"name": "Best-Loss", "type": "number", "jsonPath": ".status.best.evalLoss"},
    {"name": "Best-Model", "type": "string", "jsonPath": ".status.best.model", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """pydantic JSON Schema -> structural OpenAPI v3 schema (recursive)."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    out: dict[str, Any] = {}
    any_of = node.get("anyOf")
    if any_of is not None:
        variants = [v for v in any_of if v.get("type") != "null"]
        nullable = len(variants) < len(any_of)
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(variants) == 1:
            out = _structural({**variants[0], **rest}, defs)
            if nullable:
                out["nullable"] = True
            return out
        # Several real types (e.g. a string or a list): structural schemas need one type, so
        # the field is kept as-is and checked by the controller with the same pydantic model.
        out = {k: _structural(v, defs) for k, v in rest.items() if k not in _DROP}
        out["x-kubernetes-preserve-unknown-fields"] = True
        out.pop("default", None)
        return out
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {k: _structural(v, defs) for k, v in value.items()}
        elif key == "additionalProperties":
            if value is False:
                continue  # structural schemas prune unknown fields; forbidding is implicit
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out["additionalProperties"] = _structural(value, defs)
        else:
            out[key] = _structural(value, defs)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" \
            not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def spec_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of `spec`."""
    raw = SweepSpec.model_json_schema(by_alias=True, mode="validation")
    schema = _structural(raw, raw.get("$defs", {}))
    schema["x-kubernetes-validations"] = SPEC_RULES
    adapter = schema["properties"]["adapters"]["items"]
    adapter["x-kubernetes-validations"] = [ALPHA_RULE]
    # Axis values must not repeat (`Axes._unique_values`): a set-typed list says exactly that.
    for axis in schema["properties"]["axes"]["properties"].values():
        axis["x-kubernetes-list-type"] = "set"
    schema["properties"]["dataset"]["x-kubernetes-validations"] = [DATASET_RULE]
    training = schema["properties"]["training"]["properties"]
    training["targetModules"].update(TARGET_MODULES_BOUNDS)
    # Bound the overrides map, or the apiserver refuses the CEL rule that walks it as too
    # costly ("estimated rule cost exceeds budget").
    schema["properties"]["resources"]["properties"]["overrides"]["maxProperties"] = MAX_LIST
    return schema


STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Written by the controller: progress, lanes and their ceilings, best trial.",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "phase": {"type": "string"},
        "observedGeneration": {"type": "integer", "format": "int64"},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "ooms": {"type": "integer"},
        "trials": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "best": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "lanes": {
            "type": "array",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        # Lanes left out of `lanes` (at most plan.MAX_STATUS_LANES are listed).
        "lanesOmitted": {"type": "integer"},
        "conditions": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "observedGeneration": {"type": "integer", "format": "int64"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
}


def crd_manifest() -> dict[str, Any]:
    """The whole CustomResourceDefinition for `sweeps.ladder.dev`."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/managed-by": "ladder",
                "app.kubernetes.io/name": "ladder",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": ["ladder"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A fine-tuning sweep: a grid of lanes, each climbing "
                            "a model ladder until it runs out of memory.",
                            "required": ["spec"],
                            "x-kubernetes-validations": ROOT_RULES,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": STATUS_SCHEMA,
                            },
                        }
                    },
                }
            ],
        },
    }
