//! Finds where a chunked body ends while it is relayed as received (RFC 9112 7.1), so the
//! fast path never re-encodes a chunked response to an HTTP/1 client and never forwards
//! past its end; for an HTTP/2 client it also says where the data of each chunk lies (HTTP/2
//! frames the data itself). Every line is bounded; anything malformed is an error and the
//! connections close.

/// Longest chunk-size line (with extensions), and longest trailer section.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size {
        size: u64,
        digits: usize,
    },
    /// After the size: extensions up to CR LF.
    Ext {
        size: u64,
        len: usize,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, each ending in LF; an empty one ends the body.
    Trailer {
        line: usize,
        total: usize,
    },
    TrailerLf {
        line: usize,
        total: usize,
    },
    Done,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked(State);

impl Default for Chunked {
    fn default() -> Self {
        Chunked(State::Size { size: 0, digits: 0 })
    }
}

impl Chunked {
    pub fn done(&self) -> bool {
        self.0 == State::Done
    }

    /// Consumes body bytes; returns how many belong to the body (all of them unless the
    /// body ended inside `buf`).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, Malformed> {
        self.feed_data(buf, |_| {})
    }

    /// As [`Chunked::feed`], and calls `data` with the range of `buf` of each piece of chunk
    /// data (without the chunked framing), in order.
    pub fn feed_data(
        &mut self,
        buf: &[u8],
        mut data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.0 = match self.0 {
                State::Done => return Ok(i),
                State::Data { left } => {
                    let take = (buf.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(i..i + take);
                    i += take;
                    let left = left - take as u64;
                    self.0 = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::Size { size, digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => State::Size {
                        size: size * 16 + u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(Malformed),
                    None if digits == 0 => return Err(Malformed),
                    None if b == b'\r' => State::SizeLf { size },
                    None if b == b';' || b == b' ' || b == b'\t' => State::Ext { size, len: 0 },
                    None => return Err(Malformed),
                },
                State::Ext { size, len } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(Malformed),
                    _ if len >= MAX_LINE => return Err(Malformed),
                    _ => State::Ext { size, len: len + 1 },
                },
                State::SizeLf { size } => match b {
                    b'\n' if size == 0 => State::Trailer { line: 0, total: 0 },
                    b'\n' => State::Data { left: size },
                    _ => return Err(Malformed),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(Malformed),
                },
                State::DataLf => match b {
                    b'\n' => State::Size { size: 0, digits: 0 },
                    _ => return Err(Malformed),
                },
                State::Trailer { line, total } => match b {
                    _ if total >= MAX_TRAILERS => return Err(Malformed),
                    b'\r' => State::TrailerLf { line, total },
                    b'\n' => return Err(Malformed),
                    _ => State::Trailer {
                        line: line + 1,
                        total: total + 1,
                    },
                },
                State::TrailerLf { line, total } => match b {
                    b'\n' if line == 0 => {
                        self.0 = State::Done;
                        return Ok(i + 1);
                    }
                    b'\n' => State::Trailer {
                        line: 0,
                        total: total + 1,
                    },
                    _ => return Err(Malformed),
                },
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_split_anywhere_and_stops_there() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 0..body.len() {
            let mut c = Chunked::default();
            let mut wire = body.to_vec();
            wire.extend_from_slice(b"NEXT");
            let a = c.feed(&wire[..cut]).unwrap();
            assert_eq!(a, cut);
            let b = c.feed(&wire[cut..]).unwrap();
            assert_eq!(a + b, body.len(), "cut at {cut}");
            assert!(c.done());
        }
    }

    #[test]
    fn data_ranges_hold_the_chunks_without_their_framing() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        for cut in 0..body.len() {
            let mut c = Chunked::default();
            let mut data = Vec::new();
            for part in [&body[..cut], &body[cut..]] {
                c.feed_data(part, |r| data.extend_from_slice(&part[r]))
                    .unwrap();
            }
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "cut at {cut}");
            assert!(c.done());
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"\r\n",
            b"5\nhello",
            b"fffffffffffffffff\r\n",
            b"0\r\nx\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(Malformed), "{bad:?}");
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE + 1));
        assert_eq!(Chunked::default().feed(&long), Err(Malformed));
    }
}
