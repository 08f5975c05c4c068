"""The last request's header block, given again for equal arguments
(:class:`trio_pool.http._h2_headers.LastBlock`): the same block as checking afresh, never a
stale one."""

from __future__ import annotations

import pytest

from trio_pool.http._h2_headers import LastBlock, content_length, request_headers


def test_equal_arguments_give_the_same_block_without_rebuilding_it() -> None:
    last = LastBlock()
    headers = [(b"accept", b"*/*"), (b"content-length", b"3")]
    first = last.build(b"POST", b"/", b"example.test", b"https", headers)
    again = last.build(b"POST", b"/", b"example.test", b"https", list(headers))
    assert again[0] is first[0]
    assert first == (request_headers(b"POST", b"/", b"example.test", b"https", headers), 3)


def test_a_list_changed_after_the_request_is_checked_again() -> None:
    last = LastBlock()
    headers = [(b"accept", b"*/*")]
    block, _ = last.build(b"GET", b"/", b"example.test", b"https", headers)
    headers.append((b"authorization", b"secret"))
    block2, length = last.build(b"GET", b"/", b"example.test", b"https", headers)
    assert block2 == request_headers(b"GET", b"/", b"example.test", b"https", headers)
    assert block2 != block
    assert length is None


@pytest.mark.parametrize(
    "arguments",
    [
        (b"GET", b"/a", b"example.test", b"https", []),
        (b"GET", b"/", b"other.test", b"https", []),
        (b"GET", b"/", b"example.test", b"http", []),
        ("GET", "/", "example.test", "https", [("x-a", "1")]),
    ],
)
def test_different_arguments_give_their_own_block(arguments: tuple[object, ...]) -> None:
    last = LastBlock()
    last.build(b"GET", b"/", b"example.test", b"https", [])
    block, length = last.build(*arguments)
    assert block == request_headers(*arguments)
    assert length == content_length(block)


def test_a_bad_argument_still_raises_after_a_good_one() -> None:
    last = LastBlock()
    last.build(b"GET", b"/", b"example.test", b"https", [(b"x-a", b"1")])
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        last.build(b"GET", b"/", b"example.test", b"https", [(b"x-a", b"1\r\n2")])
    with pytest.raises(TypeError, match="pairs"):
        last.build(b"GET", b"/", b"example.test", b"https", [b"x-a"])
