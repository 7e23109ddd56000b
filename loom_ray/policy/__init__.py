"""Pure decisions (no I/O, no Ray): partition assignment, actor count, retry delays."""
