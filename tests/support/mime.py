"""MIME nested as deep as a test asks, built with loops: the builder must not need the
recursion that the code under test is meant to do without."""

from __future__ import annotations

LEAF = b"Content-Type: text/plain\r\n\r\nhello\r\n"


def nested_multipart(levels: int) -> bytes:
    """``levels`` multiparts one inside the other around a text part (a tree ``levels + 1``
    deep), from the outermost ``Content-Type`` field on: the rest of a header section."""
    opening, closing = [], []
    for level in range(levels):
        boundary = b"b%d" % level
        opening.append(
            b'Content-Type: multipart/mixed; boundary="%s"\r\n\r\n--%s\r\n' % (boundary, boundary)
        )
        closing.append(b"\r\n--%s--\r\n" % boundary)
    return b"".join(opening) + LEAF + b"".join(reversed(closing))


def nested_rfc822(levels: int) -> bytes:
    """``levels`` attached messages (message/rfc822), each the whole body of the one around it,
    around a text part (a tree ``levels + 1`` deep), from the outermost ``Content-Type`` on."""
    return b"Content-Type: message/rfc822\r\n\r\n" * levels + LEAF


def nested_digest(levels: int) -> bytes:
    """``levels`` multipart/digests one inside the other; a digest's part with no header is a
    message/rfc822 (RFC 2046 5.1.5), so each level is two entities: a tree ``2 * levels + 1``
    deep, with no ``message/`` type written anywhere."""
    opening, closing = [], []
    for level in range(levels):
        boundary = b"d%d" % level
        opening.append(
            b'Content-Type: multipart/digest; boundary="%s"\r\n\r\n--%s\r\n\r\n'
            % (boundary, boundary)
        )
        closing.append(b"\r\n--%s--\r\n" % boundary)
    return b"".join(opening) + LEAF + b"".join(reversed(closing))
