"""Limits on templates: a bounded Jinja2 sandbox, an output cap, a render time budget.

A campaign's templates come from a file, and their data from a CSV: neither may hang the
run or fill memory. `LimitedSandbox` is Jinja2's sandbox with ``range`` bounded, the
operators that multiply sizes (``*``, ``**``, ``%``) and the widening filters checked before
they allocate, and every loop over ``range`` watching the clock. `render_limited` renders
one template with a deadline and an output cap; on a POSIX main thread a CPU-time timer
interrupts any other runaway loop. A template that exceeds a limit raises
`TemplateLimitError`, which fails that message with the reason.

Imports jinja2 and mailctl.errors only.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from mailctl.errors import TemplateError

# The defaults: far above what a real message needs, far below what hurts.
RENDER_BUDGET = 0.5  # seconds of rendering per message (all its parts)
MAX_OUTPUT = 1 << 20  # characters per rendered part
MAX_RANGE = 10_000  # items in one range()
_CLOCK_EVERY = 1024  # range() items between two looks at the clock


class TemplateLimitError(TemplateError):
    """A template went past a render limit (time, output size, range)."""


class _Budget(threading.local):
    """The running render's deadline, per thread (render pools run one per process)."""

    deadline: float = math.inf
    armed: bool = False


_budget = _Budget()


def _check_time() -> None:
    if time.monotonic() > _budget.deadline:
        raise TemplateLimitError(f"rendering took over {RENDER_BUDGET:g} s (the render budget)")


def _too_big(size: float) -> TemplateLimitError:
    return TemplateLimitError(
        f"the template would make {size:.0f} characters (the limit is {MAX_OUTPUT})"
    )


def _bounded_range(*args: int) -> Iterator[int]:
    items = range(*args)
    if len(items) > MAX_RANGE:
        raise TemplateLimitError(f"range() of {len(items)} items (the limit is {MAX_RANGE})")
    return _watched(items)


def _watched(items: range) -> Iterator[int]:
    for index, item in enumerate(items):
        if index % _CLOCK_EVERY == 0:
            _check_time()
        yield item


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


def _checked_multiply(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        size = _sized(seq)
        if size is not None and isinstance(count, int) and size * count > MAX_OUTPUT:
            raise _too_big(size * count)
    return left * right


def _checked_power(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
        if right * math.log2(abs(left)) > 4096:  # a number of over 4096 bits
            raise TemplateLimitError(f"{left} ** {right} is too large a number")
    return left**right


_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\*|\d+)")


def _checked_modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        for width in _FORMAT_WIDTH.findall(left):
            if width == "*" or int(width) > MAX_OUTPUT:
                raise TemplateLimitError("a %-format width over the output limit")
    return left % right


def _widening(name: str, filter_: Callable[..., Any], width_at: int) -> Callable[..., Any]:
    """A filter whose argument ``width_at`` sets the output width (center, indent)."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        width = args[width_at] if len(args) > width_at else kwargs.get("width")
        if isinstance(width, int) and width > MAX_OUTPUT:
            raise _too_big(width)
        return filter_(*args, **kwargs)

    checked.__name__ = name
    return checked


def _checked_replace(env: Any, value: Any, old: Any, new: Any, count: Any = None) -> Any:
    text = str(value)
    old_text, new_text = str(old), str(new)
    found = text.count(old_text) if old_text else len(text) + 1
    size = len(text) + found * max(0, len(new_text) - len(old_text))
    if size > MAX_OUTPUT:
        raise _too_big(size)
    return jinja2.filters.do_replace(env, value, old, new, count)


def _checked_method(obj: Any, args: tuple[Any, ...]) -> None:
    """str.center(10**9) and friends, called as methods: their int arguments are widths."""
    if isinstance(getattr(obj, "__self__", None), str | bytes | list):
        for arg in args:
            if isinstance(arg, int) and arg > MAX_OUTPUT:
                raise _too_big(arg)


class LimitedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox with sizes and loops bounded."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _bounded_range
        self.filters["center"] = _widening("center", self.filters["center"], 1)
        self.filters["indent"] = _widening("indent", self.filters["indent"], 1)
        self.filters["replace"] = jinja2.pass_environment(_checked_replace)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            return _checked_multiply(left, right)
        if operator == "**":
            return _checked_power(left, right)
        if operator == "%":
            return _checked_modulo(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _checked_method(__obj, args)
        _check_time()
        return super().call(__context, __obj, *args, **kwargs)


_alarm_installed = False
_alarm_previous: Any = None


def _on_alarm(signum: int, frame: Any) -> None:
    if not _budget.armed:  # never raise once the render is over
        if callable(_alarm_previous):
            _alarm_previous(signum, frame)
        return
    left = _budget.deadline - time.monotonic()
    if left > 0:  # other threads' CPU time ran the timer down: wait out the wall time
        signal.setitimer(signal.ITIMER_VIRTUAL, left)
        return
    raise TemplateLimitError(f"rendering took over {RENDER_BUDGET:g} s (the render budget)")


def _alarm_ready() -> bool:
    """The CPU-time alarm (SIGVTALRM: left to its owner SIGALRM, which test runners and
    others use), installed once per process, since installing costs more than a render.
    Only on the main thread, where Python runs signal handlers."""
    global _alarm_installed, _alarm_previous
    if threading.current_thread() is not threading.main_thread():
        return False
    if not _alarm_installed:
        if not hasattr(signal, "setitimer"):
            return False
        try:
            _alarm_previous = signal.signal(signal.SIGVTALRM, _on_alarm)
        except ValueError:  # not the main interpreter
            return False
        _alarm_installed = True
    return signal.getsignal(signal.SIGVTALRM) is _on_alarm


@contextlib.contextmanager
def render_budget() -> Iterator[None]:
    """The time budget for one message's rendering (nested uses keep the outer one).

    On the main thread a CPU-time timer interrupts a loop that never reaches a check (a
    loop over a long string); elsewhere the checks in range(), calls and output do it.
    """
    if _budget.armed:
        yield
        return
    use_timer = _alarm_ready()
    _budget.deadline = time.monotonic() + RENDER_BUDGET
    _budget.armed = True
    if use_timer:
        signal.setitimer(signal.ITIMER_VIRTUAL, RENDER_BUDGET)
    try:
        yield
    finally:
        _budget.armed = False
        _budget.deadline = math.inf
        if use_timer:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)


def render_limited(template: jinja2.Template, context: dict[str, Any]) -> str:
    """One part rendered within the output cap (and the budget, when one is running)."""
    pieces: list[str] = []
    size = 0
    # The template's own generator, as Template.render uses it, watched piece by piece.
    for count, piece in enumerate(template.root_render_func(template.new_context(context))):
        size += len(piece)
        if size > MAX_OUTPUT:
            raise _too_big(size)
        pieces.append(piece)
        if count % 64 == 63:
            _check_time()
    return "".join(pieces)
