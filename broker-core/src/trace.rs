//! W3C trace context (`traceparent`, `tracestate`) kept with a message.
//!
//! A publish that carries a valid `traceparent` joins its trace: the
//! broker's publish span gets a new span id under the publisher's, and
//! that is what the message keeps, so that each delivery attempt is a
//! child of the publish (its own span id, sent as the attempt's
//! `traceparent`). An invalid `traceparent` is ignored, as the W3C
//! recommendation says, and so is a `tracestate` longer than
//! [`MAX_TRACESTATE`].

/// The longest `tracestate` kept (the W3C limit).
pub const MAX_TRACESTATE: usize = 512;

/// A trace context: the trace, the span a message's attempts are
/// children of, the flags, and the vendors' `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The span id (never all zero).
    pub span_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
    /// `tracestate`, verbatim.
    pub state: Option<Box<str>>,
}

fn hex_into(out: &mut [u8], hex: &str) -> Option<()> {
    if hex.len() != out.len() * 2
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(())
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` as lowercase hex (no `format!` per byte: this runs for
/// every traced attempt).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

impl TraceContext {
    /// Reads `traceparent` (and `tracestate`), or none when it is not a
    /// valid version-00 (or later, read as 00) header.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut ctx = TraceContext {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: 0,
            state: None,
        };
        hex_into(&mut ctx.trace_id, trace)?;
        hex_into(&mut ctx.span_id, span)?;
        let mut f = [0u8; 1];
        hex_into(&mut f, flags)?;
        ctx.flags = f[0];
        if ctx.trace_id == [0; 16] || ctx.span_id == [0; 8] {
            return None;
        }
        ctx.state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE && s.is_ascii())
            .map(Box::from);
        Some(ctx)
    }

    /// A new trace, sampled, with a random trace and span id.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: nonzero(),
            span_id: nonzero(),
            flags: 1,
            state: None,
        }
    }

    /// The same trace with a new random span id: a child of this span.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: nonzero(),
            ..self.clone()
        }
    }

    /// Its `traceparent` header value.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The bytes a store keeps: flags, trace id, span id, then
    /// `tracestate`.
    pub fn encode(&self) -> Vec<u8> {
        let state = self.state.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(25 + state.len());
        out.push(self.flags);
        out.extend_from_slice(&self.trace_id);
        out.extend_from_slice(&self.span_id);
        out.extend_from_slice(state.as_bytes());
        out
    }

    /// Reads what [`encode`](Self::encode) wrote; none for anything else
    /// (an empty field: no trace).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 25 {
            return None;
        }
        let state = std::str::from_utf8(&bytes[25..]).ok()?;
        Some(TraceContext {
            flags: bytes[0],
            trace_id: bytes[1..17].try_into().ok()?,
            span_id: bytes[17..25].try_into().ok()?,
            state: (!state.is_empty()).then(|| Box::from(state)),
        })
    }

    /// What it costs to keep in memory.
    pub fn held_bytes(&self) -> usize {
        32 + self.state.as_ref().map_or(0, |s| s.len())
    }
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = crate::secret::random();
        if bytes != [0; N] {
            return bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_written_back() {
        let ctx = TraceContext::parse(PARENT, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(ctx.traceparent(), PARENT);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.state.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(TraceContext::decode(&ctx.encode()), Some(ctx.clone()));
        let child = ctx.child();
        assert_eq!(child.trace_id, ctx.trace_id);
        assert_ne!(child.span_id, ctx.span_id);
        // A later version is read as 00 and may carry more.
        assert!(TraceContext::parse(&format!("01{}-more", &PARENT[2..]), None).is_some());
    }

    #[test]
    fn an_invalid_traceparent_is_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad}");
        }
        let long = "k=".to_owned() + &"v".repeat(MAX_TRACESTATE);
        assert_eq!(
            TraceContext::parse(PARENT, Some(&long)).unwrap().state,
            None
        );
        assert_eq!(TraceContext::decode(b"short"), None);
    }
}
