"""Our HPACK encoder and decoder (:mod:`trio_pool.http._h2_hpack`): a repeated request
head is encoded once, and every block it gives decodes, through hpack's own decoder, to
the fields it was given, whatever the dynamic table went through in between; a repeated
response head is decoded once, and always to what hpack's own decoder gives."""

from __future__ import annotations

import random

import hpack
import pytest

from trio_pool.http._h2_hpack import CachingDecoder, CachingEncoder, all_indexed


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


# -- the decoder --------------------------------------------------------------------------


def response(date: bytes = b"Sun, 06 Dec 2026 20:30:00 GMT") -> list[tuple[bytes, bytes]]:
    return [
        (b":status", b"200"),
        (b"server", b"nginx/1.22.1"),
        (b"date", date),
        (b"content-type", b"text/plain"),
        (b"content-length", b"2"),
    ]


def unindexed(fields: list[tuple[bytes, bytes]]) -> bytes:
    """As nginx sends a response head: Huffman-coded literals that touch no table."""
    return hpack.Encoder().encode([(*field, True) for field in fields], huffman=True)


def test_a_repeated_response_head_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    misses = []
    original = hpack.Decoder.decode

    def counted(self: hpack.Decoder, data: bytes, raw: bool = False) -> object:
        misses.append(data)
        return original(self, data, raw)

    monkeypatch.setattr(hpack.Decoder, "decode", counted)
    decoder = CachingDecoder()
    block = unindexed(response())
    for _ in range(5):
        assert decoder.decode(block, raw=True) == response()
    assert len(misses) == 1
    other = unindexed(response(b"Sun, 06 Dec 2026 20:30:01 GMT"))
    assert decoder.decode(other, raw=True) == response(b"Sun, 06 Dec 2026 20:30:01 GMT")
    assert decoder.decode(block, raw=True) == response()
    assert len(misses) == 2
    # Each call gets a list of its own: changing one changes no later answer.
    decoder.decode(block, raw=True).clear()
    assert decoder.decode(block, raw=True) == response()


def test_a_block_that_adds_to_the_table_is_decoded_every_time() -> None:
    """Its insertions must happen every time: the peer's encoder counts on them."""
    encoder, ours, theirs = hpack.Encoder(), CachingDecoder(), hpack.Decoder()
    indexing = encoder.encode(response())  # literals with indexing
    for _ in range(3):
        assert ours.decode(indexing, raw=True) == theirs.decode(indexing, raw=True)
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)
    assert len(ours.header_table.dynamic_entries) == 3 * len(response()) - 3  # :status static


def test_a_cached_block_is_not_used_once_the_table_changed() -> None:
    """A block of indexed fields means other fields once the table moved on."""
    encoder = hpack.Encoder()
    first = encoder.encode([(b"x-a", b"1")])  # literal with indexing: index 62 is x-a
    indexed = encoder.encode([(b"x-a", b"1")])  # index 62
    ours, theirs = CachingDecoder(), hpack.Decoder()
    for block in (first, indexed, indexed):
        assert ours.decode(block, raw=True) == theirs.decode(block, raw=True)
    moved = hpack.Encoder().encode([(b"x-b", b"2")])  # another peer state: 62 is x-b now
    for block in (moved, indexed):
        assert ours.decode(block, raw=True) == theirs.decode(block, raw=True)
    assert ours.decode(indexed, raw=True) == [(b"x-b", b"2")]


def test_limits_hold_for_cached_blocks() -> None:
    decoder = CachingDecoder()
    block = unindexed(response())
    decoder.decode(block, raw=True)
    decoder.max_header_list_size = 64
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(block, raw=True)
    decoder.max_header_list_size = 65536
    assert decoder.decode(block, raw=True) == response()


def test_a_broken_block_is_never_kept() -> None:
    decoder = CachingDecoder()
    for _ in range(2):
        with pytest.raises(hpack.HPACKDecodingError):
            decoder.decode(b"\xff", raw=True)  # an index cut off


def test_replacing_keeps_the_limits_h2_set() -> None:
    old = hpack.Decoder(max_header_list_size=1234)
    old.max_allowed_table_size = 100
    new = CachingDecoder.replacing(old)
    assert (new.max_header_list_size, new.max_allowed_table_size) == (1234, 100)


@pytest.mark.parametrize("seed", range(5))
def test_random_blocks_decode_as_hpack_decodes_them(seed: int) -> None:
    """A peer mixing indexed, indexing and unindexed heads, and table size updates."""
    rng = random.Random(seed)
    encoder, ours, theirs = hpack.Encoder(), CachingDecoder(), hpack.Decoder()
    heads = [response(f"Sun, 06 Dec 2026 20:30:0{n} GMT".encode()) for n in range(4)]
    for step in range(400):
        if rng.random() < 0.03:
            encoder.header_table_size = rng.choice([0, 256, 4096])
        fields = rng.choice(heads)
        sensitive = rng.random() < 0.5
        block = encoder.encode([(*field, sensitive) for field in fields])
        assert ours.decode(block, raw=True) == theirs.decode(block, raw=True) == fields, step
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)
