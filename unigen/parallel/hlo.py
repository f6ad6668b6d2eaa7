"""Collective traffic read from compiled HLO text (for benchmarks and sanity tests).

`collective_stats(compiled.as_text())` sums the operand bytes (and result bytes) of
every all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute, per
device. Operand bytes of an all-gather are the local shard, of an all-reduce the full
tensor; the `-start` halves of async collectives are counted, the `-done` halves not. A
collective inside a `while` body (a `lax.scan` over layers) is counted once per
iteration when XLA recorded the loop's `known_trip_count`; otherwise once, and the
result says so in `unknown_trip_counts`.
"""

from __future__ import annotations

import re
from collections import defaultdict

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
    "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
    "c64": 8, "c128": 16,
}
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_SHAPE = re.compile(r"\b([a-z]+[0-9a-z]*)\[([\d,]*)\]")
_PARAM = re.compile(r"%?([\w.\-]+):\s*(\([^)]*\)|[a-z]+[0-9a-z]*\[[\d,]*\])")
_CALLS = re.compile(r"\b(body|to_apply|calls|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_COLLECTIVE = re.compile(r"^(" + "|".join(KINDS) + r")(-start)?$")


def _type_bytes(text: str) -> int:
    """Bytes of an HLO type such as `f32[8,16]{1,0}` or a tuple of them."""
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        if dtype not in _BYTES:
            continue
        n = 1
        for d in dims.split(","):
            if d:
                n *= int(d)
        total += n * _BYTES[dtype]
    return total


def _split_instruction(rhs: str) -> tuple[str, str, str]:
    """`TYPE op(operands), attrs` -> (type, op, operands)."""
    if rhs.startswith("("):  # tuple type: up to the matching parenthesis
        depth = 0
        for i, ch in enumerate(rhs):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        type_text, rest = rhs[: i + 1], rhs[i + 1:].lstrip()
    else:
        type_text, _, rest = rhs.partition(" ")
    op, _, tail = rest.partition("(")
    depth, operands = 1, []
    for ch in tail:
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            break
        operands.append(ch)
    return type_text, op.strip(), "".join(operands)


def collective_stats(hlo_text: str) -> dict:
    """{kind: {"count", "bytes" (operands), "result_bytes"}} plus "total_bytes"
    (operand bytes of all kinds) and "unknown_trip_counts"."""
    comps: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}  # instruction / parameter name -> bytes of its value
    entry, current = None, None
    for line in hlo_text.splitlines():
        m = _HEADER.match(line.strip()) if not line.startswith(" ") else None
        if m:
            current = m.group(2)
            comps[current] = []
            if m.group(1):
                entry = current
            for name, type_text in _PARAM.findall(m.group(3)):
                sizes[name] = _type_bytes(type_text)
        elif current is not None:
            if line.strip() == "}":
                current = None
                continue
            comps[current].append(line)
            im = _INSTR.match(line)
            if im:
                sizes[im.group(1)] = _type_bytes(_split_instruction(im.group(2))[0])
    if entry is None:
        raise ValueError("collective_stats: no ENTRY computation found in the HLO text")

    # Multiplicity of each computation: product of enclosing while-loop trip counts.
    mult: dict[str, int] = defaultdict(int)
    unknown = 0

    def visit(name: str, factor: int) -> None:
        nonlocal unknown
        mult[name] += factor
        for line in comps.get(name, ()):
            trip = _TRIP.search(line)
            for role, callee in _CALLS.findall(line):
                if callee not in comps:
                    continue
                if role == "body":
                    if trip is None:
                        unknown += 1
                    visit(callee, factor * (int(trip.group(1)) if trip else 1))
                elif role in ("to_apply", "calls") and " fusion(" not in line:
                    visit(callee, factor)
            for branches in _BRANCHES.findall(line):
                for callee in branches.split(","):
                    callee = callee.strip().lstrip("%")
                    if callee in comps:
                        visit(callee, factor)

    visit(entry, 1)
    stats = {kind: {"count": 0, "bytes": 0, "result_bytes": 0} for kind in KINDS}
    for name, factor in mult.items():
        for line in comps[name]:
            im = _INSTR.match(line)
            if not im:
                continue
            _, op, operands = _split_instruction(im.group(2))
            cm = _COLLECTIVE.match(op)
            if not cm:
                continue
            kind = cm.group(1)
            # Operands print as `%name` (newer XLA) or `f32[..] %name` (older): take the
            # inline shapes when present, else look the names up.
            nbytes = _type_bytes(operands) or sum(
                sizes.get(tok.lstrip("%"), 0) for tok in re.findall(r"%[\w.\-]+", operands))
            stats[kind]["count"] += factor
            stats[kind]["bytes"] += factor * nbytes
            stats[kind]["result_bytes"] += factor * _type_bytes(_split_instruction(im.group(2))[0])
    stats["total_bytes"] = sum(stats[k]["bytes"] for k in KINDS)
    stats["unknown_trip_counts"] = unknown
    return stats
