"""Small graphs shared by several test files."""
from archdisc import ArchGraph


def indexed_graph() -> ArchGraph:
    """A narrow member (b, 2 units, channel-gated) scattered into a 4-wide add."""
    g = ArchGraph(name="mine")
    x = g.input("x", [6])
    a = g.linear("a", x, 4)
    b = g.linear("b", x, 2)
    s = g.add_op("s", "add", [a, b], units=4, index={b: [3, 1]}, gates={b: "channel"})
    g.output("out", g.linear("head", g.act("r", s), 3, searchable=False))
    return g
