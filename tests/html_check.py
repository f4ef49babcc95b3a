"""A strict HTML fragment checker shared by the report tests: every element closed in order, plus the
start tags (with attributes), table rows (cell texts) and text it saw."""

from __future__ import annotations

from html.parser import HTMLParser

VOID = {"br", "hr", "img", "input", "meta", "link", "col", "area", "base", "embed", "source", "track", "wbr"}


class HtmlChecker(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []

    @property
    def names(self) -> list[str]:
        return [tag for tag, _ in self.tags]

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        if tag == "td" and self.rows:
            self.rows[-1].append("")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if "td" in self.stack and self.rows and self.rows[-1]:
            self.rows[-1][-1] += data


def parse_html(fragment: str) -> HtmlChecker:
    """The checked fragment; fails the test when an element is left open or closed out of order."""
    checker = HtmlChecker()
    checker.feed(fragment)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return checker
