"""What is drawn: the header, the status bar, the services table, the detail view, the log
pane, the browser, the help and the footer, each from the ``View`` and the app's data.

Every scrolling area is a ``LinesControl``: it is asked for exactly the lines that fit, so a
redraw costs the rows on screen, not the 2000 forwards behind them, and no line ever wraps
(each is cut to the width).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prompt_toolkit.buffer import Buffer
from prompt_toolkit.data_structures import Point
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.layout import (
    ConditionalContainer,
    DynamicContainer,
    HSplit,
    Layout,
    VSplit,
    Window,
)
from prompt_toolkit.layout.containers import Container
from prompt_toolkit.layout.controls import BufferControl, UIContent, UIControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.mouse_handlers import MouseHandlers
from prompt_toolkit.layout.screen import Char, WritePosition
from prompt_toolkit.layout.screen import Screen as PtScreen
from prompt_toolkit.mouse_events import MouseEvent, MouseEventType
from prompt_toolkit.styles import Style

import kubefwd
from kubefwd.ui.tui import model
from kubefwd.ui.tui.view import TABS, View

Lines = list[StyleAndTextTuples]

THEMES: dict[str, dict[str, str]] = {
    # Reads on dark and light terminals alike: the terminal's own colours, bold and reverse.
    "auto": {
        "header": "reverse bold",
        "bar": "reverse",
        "title": "bold underline",
        "selected": "reverse",
        "dim": "",
        "status.active": "ansigreen bold",
        "status.error": "ansired bold",
        "status.reconnecting": "ansiyellow bold",
        "status.connecting": "ansicyan",
        "status.pending": "ansimagenta",
        "status.stopping": "",
        "tab": "",
        "tab.selected": "reverse bold",
        "message": "bold",
        "confirm": "ansired bold",
        "key": "bold",
    },
    "dark": {
        "header": "bg:#005f87 #ffffff bold",
        "bar": "bg:#303030 #e4e4e4",
        "title": "#87d7ff bold",
        "selected": "bg:#005f5f #ffffff",
        "dim": "#8a8a8a",
        "status.active": "#5fd75f bold",
        "status.error": "#ff5f5f bold",
        "status.reconnecting": "#ffd75f bold",
        "status.connecting": "#5fd7ff",
        "status.pending": "#d787ff",
        "status.stopping": "#8a8a8a",
        "tab": "#bcbcbc",
        "tab.selected": "bg:#005f87 #ffffff bold",
        "message": "#ffd75f bold",
        "confirm": "#ff5f5f bold",
        "key": "#87d7ff bold",
    },
    "light": {
        "header": "bg:#005f87 #ffffff bold",
        "bar": "bg:#d0d0d0 #000000",
        "title": "#005f87 bold",
        "selected": "bg:#afd7ff #000000",
        "dim": "#6c6c6c",
        "status.active": "#008700 bold",
        "status.error": "#d70000 bold",
        "status.reconnecting": "#af5f00 bold",
        "status.connecting": "#005faf",
        "status.pending": "#8700af",
        "status.stopping": "#6c6c6c",
        "tab": "#444444",
        "tab.selected": "bg:#005f87 #ffffff bold",
        "message": "#af5f00 bold",
        "confirm": "#d70000 bold",
        "key": "#005f87 bold",
    },
}

HINTS = ("enter:detail /:filter s:sort c:compact b:bandwidth r:reconnect R:errored "
         "d:remove f:browse tab:log ?:help q:quit")
DETAIL_HINTS = "tab/←→:tabs 1-9,y:copy ↑↓:scroll esc:back q:quit"
HELP = [
    ("j k ↑ ↓", "move the selection"),
    ("g G Home End", "first / last row"),
    ("PgUp PgDn", "a page up / down; the mouse wheel scrolls, a click selects"),
    ("/", "filter by hostname, service, namespace, pod or status (Enter keeps, Esc clears)"),
    ("s", "sort by the next column: hostname, namespace, status, rate"),
    ("c", "compact view"),
    ("b", "show or hide the bandwidth columns"),
    ("Enter", "detail of the selected forward: Info, HTTP, Logs (Tab / ← → switch, Esc back)"),
    ("1-9  y", "in Info: copy connect string N / the first one"),
    ("r", "reconnect the selected forward"),
    ("R", "reconnect every forward in error"),
    ("d", "remove the selected forward (y confirms)"),
    ("f", "browse contexts → namespaces → services; Enter forwards a namespace or a service,"
          " → opens, ← goes back"),
    ("Tab", "move between the table and the log pane"),
    ("?", "this help (any key closes it)"),
    ("q  Ctrl-C", "quit: forwards stop, the hosts file is restored"),
]
MESSAGE_SECONDS = 6.0


def style_for(theme: str) -> Style:
    return Style.from_dict(THEMES[theme])


def cut(fragments: StyleAndTextTuples, width: int) -> StyleAndTextTuples:
    """``fragments`` cut to ``width`` characters (never a wrapped line)."""
    out: StyleAndTextTuples = []
    left = width
    for frag in fragments:
        style, text = frag[0], frag[1]
        if left <= 0:
            break
        if len(text) > left:
            text = text[:left]
        out.append((style, text))
        left -= len(text)
    return out


def pad(fragments: StyleAndTextTuples, width: int, style: str = "") -> StyleAndTextTuples:
    fragments = cut(fragments, width)
    used = sum(len(f[1]) for f in fragments)
    if used < width:
        fragments = [*fragments, (style, " " * (width - used))]
    return fragments


class LinesControl(UIControl):
    """Shows what ``render(width, height)`` returns, one list of fragments per line."""

    def __init__(self, render: Callable[[int, int], Lines],
                 on_mouse: Callable[[MouseEvent], bool] | None = None,
                 focusable: bool = False) -> None:
        self.render = render
        self.on_mouse = on_mouse
        self.focusable = focusable

    def is_focusable(self) -> bool:
        return self.focusable

    def create_content(self, width: int, height: int | None) -> UIContent:
        lines = self.render(width, height or 1)
        lines = [cut(line, width) for line in lines[: height or 1]]

        def get_line(i: int) -> StyleAndTextTuples:
            return lines[i] if i < len(lines) else []

        return UIContent(get_line=get_line, line_count=len(lines), show_cursor=False)

    def mouse_handler(self, mouse_event: MouseEvent) -> Any:
        if self.on_mouse is not None and self.on_mouse(mouse_event):
            return None
        return NotImplemented


class LinesArea(Container):
    """Like a ``Window`` of a ``LinesControl``, for the table: each line is turned into the
    screen's cells once and copied in whole while the line stays the same (``render`` hands
    back the same list for a line that did not change), instead of cell by cell on every
    redraw. Not focusable; a mouse event reaches ``on_mouse`` at the area's own position."""

    def __init__(self, render: Callable[[int, int], Lines],
                 on_mouse: Callable[[MouseEvent], bool] | None = None) -> None:
        self.render = render
        self.on_mouse = on_mouse
        self._cells: dict[int, tuple[StyleAndTextTuples, int, dict[int, Char]]] = {}

    def reset(self) -> None:
        self._cells = {}

    def preferred_width(self, max_available_width: int) -> Dimension:
        return Dimension()

    def preferred_height(self, width: int, max_available_height: int) -> Dimension:
        return Dimension()

    def get_children(self) -> list[Container]:
        return []

    def _line_cells(self, line: StyleAndTextTuples, xpos: int, width: int) -> dict[int, Char]:
        cached = self._cells.get(id(line))
        if cached is not None and cached[0] is line and cached[1] == xpos:
            return cached[2]
        cells: dict[int, Char] = {}
        x = 0
        for frag in line:
            style, text = frag[0], frag[1]
            for c in text:
                char = Char(c, style)
                if x + char.width > width:
                    break
                if char.width:
                    cells[xpos + x] = char
                    x += char.width
        self._cells[id(line)] = (line, xpos, cells)
        return cells

    def write_to_screen(self, screen: PtScreen, mouse_handlers: MouseHandlers,
                        write_position: WritePosition, parent_style: str, erase_bg: bool,
                        z_index: int | None) -> None:
        xpos, ypos = write_position.xpos, write_position.ypos
        width, height = write_position.width, write_position.height
        lines = self.render(width, height)[:height]
        before = self._cells
        self._cells = {}
        for y, line in enumerate(lines):
            kept = before.get(id(line))
            if kept is not None:
                self._cells[id(line)] = kept
            screen.data_buffer[ypos + y].update(self._line_cells(line, xpos, width))
        if self.on_mouse is None:
            return
        on_mouse = self.on_mouse

        def handler(event: MouseEvent) -> Any:
            local = MouseEvent(Point(x=event.position.x - xpos, y=event.position.y - ypos),
                               event.event_type, event.button, event.modifiers)
            return None if on_mouse(local) else NotImplemented

        mouse_handlers.set_mouse_handler_for_range(xpos, xpos + width, ypos, ypos + height,
                                                   handler)


class Screen:
    """The layout of the whole screen for one ``View``."""

    def __init__(self, view: View, filter_buffer: Buffer) -> None:
        self.view = view
        self.app = view.app
        self.filter_buffer = filter_buffer
        self._row_lines: dict[str, tuple[model.Row, tuple[Any, ...], str,
                                         StyleAndTextTuples]] = {}
        self._table_cols: list[model.Column] = []  # the columns the table was drawn with
        self.table = LinesArea(self.render_table, self.table_mouse)
        self.filter_window = Window(BufferControl(filter_buffer), height=1, wrap_lines=False)
        log_height = Dimension(min=3, preferred=6, max=8)
        self.log_pane = Window(LinesControl(self.render_log, self.log_mouse, focusable=True),
                               height=log_height, wrap_lines=False)
        table_body = HSplit([
            self.table,
            Window(LinesControl(self.render_log_title), height=1),
            self.log_pane,
        ])
        self.detail = Window(LinesControl(self.render_detail, self.detail_mouse),
                             wrap_lines=False)
        self.other = Window(LinesControl(self.render_other), wrap_lines=False)

        def body() -> Container:
            v = self.view
            if v.help or v.browser is not None:
                return self.other
            if v.detail:
                return self.detail
            return table_body

        filtering = Condition(lambda: self.view.filtering)
        footer = HSplit([
            ConditionalContainer(
                VSplit([Window(LinesControl(lambda w, h: [[("class:key", "/")]]), width=1),
                        self.filter_window]),
                filter=filtering),
            ConditionalContainer(Window(LinesControl(self.render_footer), height=1),
                                 filter=~filtering),
        ])
        self.container = HSplit([
            Window(LinesControl(self.render_header), height=1),
            Window(LinesControl(self.render_bar), height=1),
            DynamicContainer(body),
            footer,
        ])
        # The log pane holds the focus when the filter line does not (the keys act on the
        # view, whatever has the focus).
        self.home = self.log_pane
        self.layout = Layout(self.container, focused_element=self.home)

    # -- header and bars --------------------------------------------------------------------

    def render_header(self, width: int, height: int) -> Lines:
        control = self.app.control
        contexts = ",".join(control.contexts) or "-"
        namespaces = ",".join(sorted({w.namespace or "*" for w in control.namespaces()})) or "-"
        text = f" kubefwd {kubefwd.__version__} │ context {contexts} │ namespaces {namespaces}"
        hint = "  ?:help q:quit "
        text = model.fit(text, max(0, width - len(hint))) + hint
        return [pad([("class:header", text)], width, "class:header")]

    def render_bar(self, width: int, height: int) -> Lines:
        v = self.view
        counts = v.counts()
        snap = self.app.metrics.totals()
        parts = [f" forwards {counts.active}/{counts.forwards} active",
                 f"errors {counts.error}"]
        if v.filter:
            parts.append(f"filter '{v.filter}': {len(v.rows())} shown")
        parts += [f"in {model.human_bytes(snap.bytes_in)} ({model.human_rate(snap.rate_in)})",
                 f"out {model.human_bytes(snap.bytes_out)} ({model.human_rate(snap.rate_out)})",
                 f"sort {v.sort}"]
        return [pad([("class:bar", " │ ".join(parts))], width, "class:bar")]

    def render_footer(self, width: int, height: int) -> Lines:
        v = self.view
        if v.confirm is not None:
            return [[("class:confirm", " " + v.confirm[0])]]
        if v.message and time.monotonic() - v.message_at < MESSAGE_SECONDS:
            return [[("class:message", " " + v.message)]]
        if v.browser is not None:
            return [[("class:dim", " ↑↓:move enter:forward/open →:open ←:back esc:close")]]
        return [[("class:dim", " " + (DETAIL_HINTS if v.detail else HINTS))]]

    # -- the table --------------------------------------------------------------------------

    def _columns(self, width: int) -> list[model.Column]:
        multi_namespace, multi_context, host_w, addr_w = self.view.shape()
        return model.columns(width, compact=self.view.compact, bandwidth=self.view.bandwidth,
                             multi_namespace=multi_namespace, multi_context=multi_context,
                             host_width=host_w, address_width=addr_w)

    def render_table(self, width: int, height: int) -> Lines:
        v = self.view
        rows = v.rows()
        cols = self._columns(width)
        lines: Lines = [pad([("class:title", model.header(cols, v.sort))], width)]
        if not rows:
            text = (f"no forward matches '{v.filter}'" if v.filter
                    else "no forwards yet (f: browse and add some)")
            lines.append([("class:dim", " " + text)])
            return lines
        table_focused = not v.focus_log
        self._table_cols = cols
        shape = (tuple(cols), width)
        drawn: dict[str, tuple[model.Row, tuple[Any, ...], str, StyleAndTextTuples]] = {}
        for row in v.visible(max(1, height - 1)):
            selected = row.key == v.selected
            base = ("class:selected" if table_focused else "underline") if selected else ""
            # A row drawn last time with the same figures, columns and style is reused: a
            # key press that moves the selection lays out two rows, not the page.
            cached = self._row_lines.get(row.key)
            if cached is not None and cached[0] is row and cached[1] == shape \
                    and cached[2] == base:
                line = cached[3]
            else:
                line = []
                for i, (name, text) in enumerate(model.render_row(row, cols)):
                    if i:
                        line.append((base, " "))
                    style = base
                    if name == "status":
                        style = f"{base} class:status.{row.status}".strip()
                    line.append((style, text))
                line = pad(line, width, base)
            drawn[row.key] = (row, shape, base, line)
            lines.append(line)
        self._row_lines = drawn
        return lines

    def figures(self) -> tuple[Any, ...]:
        """The figures the screen shows, as text: the status bar's totals and rates, and the
        cells of the table rows drawn last time (with their current values). Two equal
        results draw the same screen, so a new metrics sample that changes nothing visible
        needs no redraw (the detail view is left to its own clock)."""
        v = self.view
        snap = self.app.metrics.totals()
        bar = (model.human_bytes(snap.bytes_in), model.human_rate(snap.rate_in),
               model.human_bytes(snap.bytes_out), model.human_rate(snap.rate_out))
        if v.detail or v.help or v.browser is not None or not self._table_cols:
            return bar
        cols = self._table_cols
        shown = v.rows()[v.offset:v.offset + v.page]
        return bar, tuple(tuple(model.render_row(v.with_metrics(row), cols)) for row in shown)

    def table_mouse(self, event: MouseEvent) -> bool:
        v = self.view
        if event.event_type == MouseEventType.SCROLL_UP:
            v.move(-3)
        elif event.event_type == MouseEventType.SCROLL_DOWN:
            v.move(3)
        elif event.event_type == MouseEventType.MOUSE_UP:
            if event.position.y >= 1:
                v.select_at(event.position.y - 1)
                v.focus_log = False
        else:
            return False
        return True

    # -- the log pane -----------------------------------------------------------------------

    def render_log_title(self, width: int, height: int) -> Lines:
        v = self.view
        where = f" (scrolled up {v.log_offset})" if v.log_offset else ""
        focus = " [focused: ↑↓ scroll, tab back]" if v.focus_log else ""
        return [pad([("class:title", f" log{where}{focus}")], width)]

    def render_log(self, width: int, height: int) -> Lines:
        v = self.view
        lines = list(v.log)
        end = len(lines) - v.log_offset
        shown = lines[max(0, end - height):max(0, end)]
        return [[("", " " + line)] for line in shown]

    def log_mouse(self, event: MouseEvent) -> bool:
        if event.event_type == MouseEventType.SCROLL_UP:
            self.view.scroll_log(3)
        elif event.event_type == MouseEventType.SCROLL_DOWN:
            self.view.scroll_log(-3)
        elif event.event_type == MouseEventType.MOUSE_UP:
            self.view.focus_log = True
        else:
            return False
        return True

    # -- the detail view --------------------------------------------------------------------

    def render_detail(self, width: int, height: int) -> Lines:
        v = self.view
        row = v.selected_row()
        tabs: StyleAndTextTuples = [("", " ")]
        for i, name in enumerate(TABS):
            tabs.append(("class:tab.selected" if i == v.tab else "class:tab", f" {name} "))
            tabs.append(("", " "))
        if row is None:
            return [tabs, [("class:dim", " the forward is gone")]]
        tabs.append(("class:title", f"  {row.host}  ({row.key})"))
        body: Lines
        name = TABS[v.tab]
        if name == "Info":
            body = self.render_info(row, width)
        elif name == "HTTP":
            body = self.render_http(row, width, height - 2)
        else:
            body = self.render_pod_log(width, height - 2)
        return [tabs, [], *body]

    def render_info(self, row: model.Row, width: int) -> Lines:
        status_style = f"class:status.{row.status}"
        lines: Lines = [
            [("", " status  "), (status_style, row.status),
             ("", f"   address {row.address}   namespace {row.namespace}"
                  f"   context {row.context}")],
            [("", f" pod     {row.pod or '-'}   connected {model.age(row.connected_since)}"
                  f"   open connections {row.open}")],
            [],
            [("class:title", " connect strings (1-9 copy, y copies the first)")],
        ]
        strings = model.connect_strings(row)
        for i, text in enumerate(strings[:9], 1):
            lines.append([("class:key", f"  {i}"), ("", f"  {text}")])
        if len(strings) > 9:
            lines.append([("class:dim", f"     … and {len(strings) - 9} more")])
        spark_w = max(10, min(60, width - 40))
        ins = [a for a, _ in row.history]
        outs = [b for _, b in row.history]
        lines += [
            [],
            [("", f" in   {model.human_bytes(row.bytes_in):>8} {model.human_rate(row.rate_in):>10}"
                  "  "), ("class:status.active", model.sparkline(ins, spark_w))],
            [("", f" out  {model.human_bytes(row.bytes_out):>8} "
                  f"{model.human_rate(row.rate_out):>10}  "),
             ("class:status.connecting", model.sparkline(outs, spark_w))],
            [],
            [("", " last error  "),
             ("class:status.error" if row.last_error else "class:dim",
              row.last_error or "none")],
        ]
        return lines

    def render_http(self, row: model.Row, width: int, height: int) -> Lines:
        http = getattr(self.app, "http", None)
        exchanges = list(http.recent(row.key, 100)) if http is not None else []
        if not exchanges:
            return [[("class:dim", " no HTTP traffic seen")]]
        lines: Lines = [[("class:title",
                          f" {'TIME':8} {'METHOD':7} {'STATUS':6} {'LATENCY':>9} "
                          f"{'SIZE':>7}  PATH")]]
        for ex in exchanges[-max(1, height - 1):]:
            stamp = time.strftime("%H:%M:%S", time.localtime(ex.time))
            status = str(ex.status) if ex.status is not None else "-"
            latency = f"{ex.latency_ms:.1f}ms" if ex.latency_ms is not None else "-"
            size = model.human_bytes(ex.size) if ex.size is not None else "-"
            style = ("class:status.error" if ex.status is not None and ex.status >= 500
                     else "class:status.reconnecting"
                     if ex.status is not None and ex.status >= 400 else "")
            lines.append([("", f" {stamp:8} {ex.method:7} "), (style, f"{status:6}"),
                          ("", f" {latency:>9} {size:>7}  {ex.path}")])
        return lines

    def render_pod_log(self, width: int, height: int) -> Lines:
        follower = self.view.pod_log
        if follower is None:
            return [[("class:dim", " no log")]]
        state = "paused (scrolled up; End resumes)" if follower.frozen_at is not None \
            else follower.status
        lines: Lines = [[("class:dim", f" {state}")]]
        lines += [[("", " " + line)] for line in follower.window(max(1, height - 1))]
        return lines

    def detail_mouse(self, event: MouseEvent) -> bool:
        v = self.view
        if TABS[v.tab] != "Logs":
            return False
        if event.event_type == MouseEventType.SCROLL_UP:
            v.scroll_pod_log(3)
        elif event.event_type == MouseEventType.SCROLL_DOWN:
            v.scroll_pod_log(-3)
        else:
            return False
        return True

    # -- help and browser -------------------------------------------------------------------

    def render_other(self, width: int, height: int) -> Lines:
        v = self.view
        if v.help:
            lines: Lines = [[("class:title", " keys")], []]
            for keys, what in HELP:
                lines.append([("class:key", f" {keys:14}"), ("", what)])
            return lines
        b = v.browser
        assert b is not None
        where = {"contexts": "contexts",
                 "namespaces": f"namespaces of {b.context}",
                 "services": f"services of {b.namespace} ({b.context})"}[b.level]
        lines = [[("class:title", f" browse: {where}")], []]
        if b.loading:
            return [*lines, [("class:dim", " loading…")]]
        if b.error:
            return [*lines, [("class:status.error", f" {b.error}")]]
        if not b.items:
            return [*lines, [("class:dim", " nothing here")]]
        room = max(1, height - 2)
        start = max(0, min(b.selected - room // 2, len(b.items) - room))
        for i, item in enumerate(b.items[start:start + room], start):
            style = "class:selected" if i == b.selected else ""
            lines.append(pad([(style, f"  {item}")], width, style))
        return lines
