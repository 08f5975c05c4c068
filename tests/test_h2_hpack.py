"""Our HPACK encoder (:mod:`trio_pool.http._h2_hpack`): a repeated request head is
encoded once, and every block it gives decodes, through hpack's own decoder, to the
fields it was given, whatever the dynamic table went through in between."""

from __future__ import annotations

import random

import hpack
import pytest

from trio_pool.http._h2_hpack import CachingEncoder, all_indexed


def head(path: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"example.test"),
        (b":path", path),
        (b"user-agent", b"trio-pool"),
        *extra,
    ]


def test_a_repeated_head_is_encoded_once_and_decodes_the_same() -> None:
    encoder, decoder = CachingEncoder(), hpack.Decoder()
    first = encoder.encode(head(b"/"))
    assert not all_indexed(first)  # literals with indexing: the table grows
    second = encoder.encode(head(b"/"))
    assert all_indexed(second)
    assert encoder.encode(head(b"/")) is second  # the cached bytes
    for block in (first, second, second):
        assert decoder.decode(block, raw=True) == head(b"/")


def test_a_table_change_forgets_every_cached_block() -> None:
    encoder, decoder = CachingEncoder(), hpack.Decoder()
    blocks = [encoder.encode(head(b"/")), encoder.encode(head(b"/"))]
    blocks.append(encoder.encode(head(b"/other")))  # adds to the table: indices move
    blocks.append(encoder.encode(head(b"/")))
    assert blocks[3] is not blocks[1]
    expected = [head(b"/"), head(b"/"), head(b"/other"), head(b"/")]
    assert [decoder.decode(block, raw=True) for block in blocks] == expected


def test_a_table_size_change_forgets_every_cached_block() -> None:
    encoder, decoder = CachingEncoder(), hpack.Decoder()
    blocks = [encoder.encode(head(b"/")), encoder.encode(head(b"/"))]
    encoder.header_table_size = 0
    block = encoder.encode(head(b"/"))
    assert block is not blocks[1]
    assert not all_indexed(block)  # starts with the size update
    decoder.decode(blocks[0])
    decoder.decode(blocks[1])
    assert decoder.decode(block, raw=True) == head(b"/")
    assert decoder.header_table_size == 0


def test_a_never_indexed_field_is_never_taken_from_the_cache() -> None:
    encoder, decoder = CachingEncoder(), hpack.Decoder()
    plain = head(b"/", (b"authorization", b"secret-token"))
    hidden = [*head(b"/"), hpack.NeverIndexedHeaderTuple(b"authorization", b"secret-token")]
    blocks = [encoder.encode(plain), encoder.encode(plain)]
    assert all_indexed(blocks[1])
    blocks.append(encoder.encode(hidden))
    assert blocks[2] is not blocks[1]  # hpack's own encoding, not the cache's
    assert [decoder.decode(block, raw=True) for block in blocks] == [plain, plain, hidden]
    # On a table without it, the field goes as a never-indexed literal.
    assert not all_indexed(CachingEncoder().encode(hidden))


@pytest.mark.parametrize("seed", range(5))
def test_random_sequences_decode_to_what_was_encoded(seed: int) -> None:
    rng = random.Random(seed)
    encoder, decoder = CachingEncoder(), hpack.Decoder()
    heads = [head(f"/{n}".encode(), (b"x-n", str(n).encode())) for n in range(6)]
    for step in range(400):
        if rng.random() < 0.02:
            size = rng.choice([0, 256, 4096])
            encoder.header_table_size = size
        fields = rng.choice(heads)
        assert decoder.decode(encoder.encode(fields), raw=True) == fields, step


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (b"", True),
        (b"\x82\x87", True),
        (b"\xff\x00", True),  # index 127: one more octet
        (b"\xff\x80\x01", True),  # a two-octet continuation
        (b"\xff", False),  # cut off
        (b"\x82\x44\x01/", False),  # a literal with indexing
        (b"\x3f\xe1\x1f\x82", False),  # a table size update first
    ],
)
def test_all_indexed(block: bytes, expected: bool) -> None:
    assert all_indexed(block) is expected


def test_literals_go_out_without_huffman_coding() -> None:
    path = b"/items/12345?q=abc"
    block = CachingEncoder().encode([(b":path", path)])
    assert path in block  # the value as it is
    assert hpack.Decoder().decode(block, raw=True) == [(b":path", path)]
