"""The methods the table scores, named once: the baseline, each variant under each test-time rule
that applies to it, and each of those as an ensemble with the baseline.

A method's name is `<variant>` on the paper's path, `<variant>-<rule>` under another test-time
rule (`jobs/mtgan/roi_input.py`), with `_ensemble` appended for the ensemble: `mtgan`,
`mtgan_ensemble`, `mtgan-by_size`, `mtgan-by_size_ensemble`. Variant and rule names hold no `-`.
The table's order: the paper's experiment first (baseline, the variants in registry order, then
their ensembles), then each other rule's rows and their ensembles.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.mtgan.settings import PAPER_RULE, RULES, VARIANTS, applies

BASELINE = "baseline"
BASELINE_LABEL = "baseline detector"
BASELINE_COLOR = "#4d4d4d"
ENSEMBLE = "_ensemble"
# What D reads on the paper's path, by the variant's up-sampler (Variant.generator).
PAPER_PATHS = {"learned": "every ROI through G", "bilinear": "every ROI up-sampled bilinearly", "none": "the proposal resized to 64x64 (paper: 224x224)"}


@dataclass(frozen=True)
class Method:
    variant: str | None  # None: the baseline detector's own detections
    rule: str = PAPER_RULE
    ensemble: bool = False


def method_name(variant: str, rule: str = PAPER_RULE, ensemble: bool = False) -> str:
    return (variant if rule == PAPER_RULE else f"{variant}-{rule}") + (ENSEMBLE if ensemble else "")


def parse_method(name: str) -> Method:
    """The method a name stands for; ValueError for a name that is none."""
    if name == BASELINE:
        return Method(None)
    ensemble = name.endswith(ENSEMBLE)
    variant, _, rule = name.removesuffix(ENSEMBLE).partition("-")
    rule = rule or PAPER_RULE
    if variant not in VARIANTS or rule not in RULES or not applies(rule, VARIANTS[variant]):
        raise ValueError(
            f"unknown method {name!r}: baseline, or <variant>[-<rule>][_ensemble] with a variant of "
            f"{list(VARIANTS)} and a test-time rule of {list(RULES)} that applies to it"
        )
    return Method(variant, rule, ensemble)


def method_key(name: str) -> tuple[int, int, int]:
    """Sort key: the table's order (see the module's docstring); unknown names last."""
    try:
        m = parse_method(name)
    except ValueError:
        return (len(RULES), 1, len(VARIANTS))
    if m.variant is None:
        return (0, 0, -1)
    return (list(RULES).index(m.rule), int(m.ensemble), list(VARIANTS).index(m.variant))


def inferences_of(variants: list[str], rules: list[str]) -> list[tuple[str, str]]:
    """Each (variant, rule) pair of these variants and rules where the rule applies, in the table's
    order (rules, then variants, in registry order)."""
    return [(v, r) for r in RULES if r in rules for v in VARIANTS if v in variants and applies(r, VARIANTS[v])]


def all_methods(variants: list[str], rules: list[str], ensemble: bool) -> list[str]:
    """Every method of these variants and rules, in the table's order."""
    names = [BASELINE] + [method_name(v, r, e) for v, r in inferences_of(variants, rules) for e in ((False, True) if ensemble else (False,))]
    return sorted(names, key=method_key)


def display_name(name: str) -> str:
    """The table's row name: the variant's label, the ensemble, and the path D's input took."""
    try:
        m = parse_method(name)
    except ValueError:
        return name
    if m.variant is None:
        return BASELINE_LABEL
    variant = VARIANTS[m.variant]
    label = variant.label + (" x baseline" if m.ensemble else "")
    path = f"{PAPER_PATHS[variant.generator]} ({RULES[m.rule].label})" if m.rule == PAPER_RULE else RULES[m.rule].label
    return f"{label}: {path}"


def _shade(color: str, toward: int, share: float) -> str:
    rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (toward - c) * share):02x}" for c in rgb)


def method_color(name: str) -> str:
    """A fixed colour per method: the variant's; its ensemble darker, another rule's rows lighter."""
    try:
        m = parse_method(name)
    except ValueError:
        return "#7f7f7f"
    if m.variant is None:
        return BASELINE_COLOR
    color = VARIANTS[m.variant].color
    if m.rule != PAPER_RULE:
        color = _shade(color, 255, 0.45)
    return _shade(color, 0, 0.4) if m.ensemble else color
