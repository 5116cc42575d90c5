"""Request bodies schemathesis cannot make by itself, for tests/tests/openapi.rs.

Plugin uploads take the module as `application/wasm`: generate the wasm
magic number and version followed by random bytes, so the server's
compiler sees something module-shaped (and refuses it, 422)."""

from hypothesis import strategies as st
import schemathesis

schemathesis.openapi.media_type(
    "application/wasm",
    st.binary(max_size=512).map(lambda rest: b"\0asm\x01\0\0\0" + rest),
)

