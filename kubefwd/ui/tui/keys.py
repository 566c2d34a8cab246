"""The key bindings of the view: each key calls one ``View`` action.

Modes, from the first that applies: a confirmation takes the next key; the help closes on
any key; the browser; the filter line; the detail view; the table (or the log pane when it
has the focus). Ctrl-C and ``q`` quit from everywhere but the filter line (where ``q`` is
typed) and a confirmation.
"""

from __future__ import annotations

from collections.abc import Callable

from prompt_toolkit.filters import Condition, Filter
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys

from kubefwd.ui.tui.view import TABS, View


def bindings(view: View, on_filter: Callable[[bool], None]) -> KeyBindings:
    """``on_filter(True)`` gives the filter line the keyboard, ``False`` takes it back."""
    kb = KeyBindings()
    confirm = Condition(lambda: view.confirm is not None)
    helping = Condition(lambda: view.help and view.confirm is None)
    browsing = Condition(lambda: view.browser is not None and view.confirm is None
                         and not view.help)
    filtering = Condition(lambda: view.filtering)
    normal = ~confirm & ~helping & ~browsing & ~filtering
    detail = normal & Condition(lambda: view.detail)
    table = normal & Condition(lambda: not view.detail and not view.focus_log)
    logpane = normal & Condition(lambda: not view.detail and view.focus_log)
    logs_tab = detail & Condition(lambda: TABS[view.tab] == "Logs")

    def on(*keys: str, filter: Filter) -> Callable[[Callable[[], None]], Callable[[], None]]:
        def register(action: Callable[[], None]) -> Callable[[], None]:
            def handler(event: KeyPressEvent) -> None:
                action()

            kb.add(*keys, filter=filter)(handler)
            return action

        return register

    @kb.add("c-c")
    def _quit_now(event: KeyPressEvent) -> None:
        view.quit()
        event.app.exit()

    @kb.add("q", filter=~confirm & ~filtering)
    def _quit(event: KeyPressEvent) -> None:
        view.quit()
        event.app.exit()

    # -- confirmation and help --------------------------------------------------------------
    on("y", filter=confirm)(lambda: view.answer(True))
    on(Keys.Any, filter=confirm)(lambda: view.answer(False))
    on(Keys.Any, filter=helping)(lambda: setattr(view, "help", False))

    # -- browser ----------------------------------------------------------------------------
    for key in ("up", "k"):
        on(key, filter=browsing)(lambda: view.browse_move(-1))
    for key in ("down", "j"):
        on(key, filter=browsing)(lambda: view.browse_move(1))
    on("pageup", filter=browsing)(lambda: view.browse_move(-10))
    on("pagedown", filter=browsing)(lambda: view.browse_move(10))
    on("enter", filter=browsing)(view.browse_enter)
    for key in ("right", "l"):
        on(key, filter=browsing)(view.browse_open)
    for key in ("left", "h", "backspace"):
        on(key, filter=browsing)(view.browse_back)
    on("escape", filter=browsing)(view.close_browser)

    # -- filter line ------------------------------------------------------------------------
    @kb.add("enter", filter=filtering)
    def _keep(event: KeyPressEvent) -> None:
        view.keep_filter()
        on_filter(False)

    @kb.add("escape", filter=filtering, eager=True)
    def _clear(event: KeyPressEvent) -> None:
        view.clear_filter()
        on_filter(False)

    # -- everywhere outside the modes above -------------------------------------------------
    on("?", filter=normal)(lambda: setattr(view, "help", True))
    on("f", filter=normal)(view.open_browser)
    on("r", filter=normal)(view.reconnect_selected)
    on("R", filter=normal)(view.reconnect_errored)
    on("d", filter=normal)(view.ask_remove)
    on("c", filter=normal)(view.toggle_compact)
    on("b", filter=normal)(view.toggle_bandwidth)
    on("s", filter=normal)(view.cycle_sort)

    @kb.add("/", filter=normal)
    def _filter(event: KeyPressEvent) -> None:
        view.close_detail()
        view.start_filter()
        on_filter(True)

    # -- table ------------------------------------------------------------------------------
    for key in ("up", "k"):
        on(key, filter=table)(lambda: view.move(-1))
    for key in ("down", "j"):
        on(key, filter=table)(lambda: view.move(1))
    for key in ("g", "home"):
        on(key, filter=table)(view.home)
    for key in ("G", "end"):
        on(key, filter=table)(view.end)
    on("pageup", filter=table)(lambda: view.move(-view.page))
    on("pagedown", filter=table)(lambda: view.move(view.page))
    on("enter", filter=table)(view.open_detail)
    on("tab", filter=normal & ~detail)(view.toggle_focus)

    # -- log pane ---------------------------------------------------------------------------
    for key in ("up", "k"):
        on(key, filter=logpane)(lambda: view.scroll_log(1))
    for key in ("down", "j"):
        on(key, filter=logpane)(lambda: view.scroll_log(-1))
    on("pageup", filter=logpane)(lambda: view.scroll_log(5))
    on("pagedown", filter=logpane)(lambda: view.scroll_log(-5))
    for key in ("G", "end"):
        on(key, filter=logpane)(lambda: setattr(view, "log_offset", 0))
    on("escape", filter=logpane)(lambda: setattr(view, "focus_log", False))

    # -- detail -----------------------------------------------------------------------------
    for key in ("tab", "right"):
        on(key, filter=detail)(lambda: view.next_tab(1))
    for key in ("s-tab", "left"):
        on(key, filter=detail)(lambda: view.next_tab(-1))
    on("escape", filter=detail)(view.close_detail)
    on("y", filter=detail)(lambda: view.copy(1))
    for n in range(1, 10):
        on(str(n), filter=detail)(lambda n=n: view.copy(n))  # type: ignore[misc]
    for key in ("up", "k"):
        on(key, filter=logs_tab)(lambda: view.scroll_pod_log(1))
    for key in ("down", "j"):
        on(key, filter=logs_tab)(lambda: view.scroll_pod_log(-1))
    on("pageup", filter=logs_tab)(lambda: view.scroll_pod_log(10))
    on("pagedown", filter=logs_tab)(lambda: view.scroll_pod_log(-10))
    for key in ("G", "end"):
        on(key, filter=logs_tab)(lambda: view.scroll_pod_log(-10**9))
    return kb
