//! Kafka's connection framing: every request is a 4-byte big-endian length
//! followed by that many bytes. Pure logic over a byte buffer so that the
//! limits (negative sizes, `socket.request.max.bytes`) are tested without
//! sockets.

use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid frame size {0}")]
    NegativeSize(i32),
    #[error("frame of {size} bytes exceeds socket.request.max.bytes ({max})")]
    TooLarge { size: usize, max: usize },
}

/// Splits a byte stream into request frames.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { max_frame }
    }

    /// Takes the next complete frame (without its length prefix) out of
    /// `buf`, or returns `Ok(None)` if more bytes are needed. An error means
    /// the connection must be closed, as Kafka does.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if size < 0 {
            return Err(FrameError::NegativeSize(size));
        }
        let size = size as usize;
        if size > self.max_frame {
            return Err(FrameError::TooLarge {
                size,
                max: self.max_frame,
            });
        }
        if buf.len() < 4 + size {
            // Reserve up front so a large frame is read without repeated regrowth.
            buf.reserve(4 + size - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        Ok(Some(buf.split_to(size).freeze()))
    }
}

/// Prefixes an encoded response with its length.
pub fn frame(body: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&[0u8, 0, 0][..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[5, 1, 2]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[3, 4, 5, 0, 0]);
        assert_eq!(
            d.decode(&mut buf).unwrap().unwrap(),
            Bytes::from_static(&[1, 2, 3, 4, 5])
        );
        // The start of the next frame is kept.
        assert_eq!(&buf[..], &[0, 0]);
    }

    #[test]
    fn several_frames_in_one_read() {
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(b"ab"));
        buf.extend_from_slice(&frame(b""));
        buf.extend_from_slice(&frame(b"xyz"));
        assert_eq!(&d.decode(&mut buf).unwrap().unwrap()[..], b"ab");
        assert_eq!(&d.decode(&mut buf).unwrap().unwrap()[..], b"");
        assert_eq!(&d.decode(&mut buf).unwrap().unwrap()[..], b"xyz");
        assert_eq!(d.decode(&mut buf), Ok(None));
    }

    #[test]
    fn negative_size_is_an_error() {
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::NegativeSize(-1)));
    }

    #[test]
    fn oversized_frame_is_rejected_before_it_is_buffered() {
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&1025i32.to_be_bytes()[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(FrameError::TooLarge {
                size: 1025,
                max: 1024
            })
        );
        let mut ok = BytesMut::from(&1024i32.to_be_bytes()[..]);
        assert_eq!(d.decode(&mut ok), Ok(None));
    }
}
