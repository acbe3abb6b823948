//! Running the handshake over a stream.
//!
//! The records are written to and read from the stream under the [`Framed`] directly,
//! before any frame: the magic is then the very first bytes of the connection, so a
//! program that is not a kvs node is told apart by its first bytes rather than by whatever
//! length its bytes would announce as a frame. Records are read with exact-size reads, so
//! nothing after the record is consumed and frames start cleanly behind it.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::layout::{self, RECORD_HEADER_BYTES};
use super::{
    check_hello, Accepted, HandshakeExpectation, HandshakeRefusal, Hello, HelloReply, MAGIC,
    PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use crate::WireError;

/// Runs the connecting side's handshake: sends `hello`, waits for the reply.
///
/// Call it on a fresh connection, before any frame is sent or received. Returns what the
/// accepting side said on acceptance; a refusal is [`WireError::PeerRefused`] with the
/// peer's reason, a reply that is not a kvs reply is [`WireError::BadReply`], and no reply
/// within `timeout` is [`WireError::HandshakeTimeout`]. Needs a tokio runtime with time.
pub async fn client_handshake<T>(
    framed: &mut Framed<T, LengthDelimitedCodec>,
    hello: &Hello,
    timeout: Duration,
) -> Result<Accepted, WireError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    ensure_first(framed)?;
    let record = hello.encode()?;
    with_timeout(timeout, async {
        let io = framed.get_mut();
        io.write_all(&record).await.map_err(closed_or_io)?;
        io.flush().await.map_err(closed_or_io)?;
        let reply = read_record(io).await?;
        match HelloReply::decode(&reply).map_err(WireError::BadReply)? {
            HelloReply::Accepted(accepted) => {
                if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&accepted.version) {
                    return Err(WireError::BadReply(HandshakeRefusal::UnsupportedVersion {
                        got: accepted.version,
                        min: PROTOCOL_VERSION_MIN,
                        max: PROTOCOL_VERSION,
                    }));
                }
                Ok(accepted)
            }
            HelloReply::Refused(refusal) => Err(WireError::PeerRefused(refusal)),
        }
    })
    .await
}

/// Runs the accepting side's handshake: reads the peer's [`Hello`], checks it against
/// `expected` with [`check_hello`], and answers.
///
/// Call it on a freshly accepted connection, before any frame. On acceptance it replies
/// with `node_id` (this node's id) and the peer's version, and returns the peer's hello.
/// On refusal it sends the refusal (best effort), shuts down its sending half, and returns
/// [`WireError::Refused`] with the same reason; the caller then drops the connection.
/// A peer that sends nothing within `timeout` gives [`WireError::HandshakeTimeout`].
/// Needs a tokio runtime with time.
pub async fn server_handshake<T>(
    framed: &mut Framed<T, LengthDelimitedCodec>,
    expected: &HandshakeExpectation,
    node_id: u64,
    timeout: Duration,
) -> Result<Hello, WireError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    server_handshake_with(framed, expected, node_id, timeout, |_| async { Ok(()) }).await
}

/// [`server_handshake`] with one more check by the host: `admit` runs on a hello that
/// passed [`check_hello`], before the reply is sent, and may refuse it.
///
/// This is where a host checks what only it knows (such as the instance id it recorded for
/// a member) and makes durable what acceptance means before the peer learns of it: the
/// acceptance is sent only after `admit` returns `Ok`. `admit` runs within `timeout`.
pub async fn server_handshake_with<T, F, Fut>(
    framed: &mut Framed<T, LengthDelimitedCodec>,
    expected: &HandshakeExpectation,
    node_id: u64,
    timeout: Duration,
    admit: F,
) -> Result<Hello, WireError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Hello) -> Fut,
    Fut: Future<Output = Result<(), HandshakeRefusal>>,
{
    ensure_first(framed)?;
    with_timeout(timeout, async {
        let io = framed.get_mut();
        let record = read_record(io).await?;
        let verdict =
            Hello::decode(&record).and_then(|hello| check_hello(&hello, expected).map(|()| hello));
        let verdict = match verdict {
            Ok(hello) => admit(&hello).await.map(|()| hello),
            Err(refusal) => Err(refusal),
        };
        match verdict {
            Ok(hello) => {
                let joining = hello.identity.as_ref().is_some_and(|i| i.joining);
                let reply = HelloReply::Accepted(Accepted {
                    node_id,
                    version: hello.version,
                    cluster: expected.cluster.clone().filter(|_| joining),
                });
                io.write_all(&reply.encode()).await.map_err(closed_or_io)?;
                io.flush().await.map_err(closed_or_io)?;
                Ok(hello)
            }
            Err(refusal) => {
                let reply = HelloReply::Refused(refusal.clone()).encode();
                // Best effort: the peer may already be gone, and the refusal is what we
                // report either way.
                let _ = async {
                    io.write_all(&reply).await?;
                    io.shutdown().await
                }
                .await;
                Err(WireError::Refused(refusal))
            }
        }
    })
    .await
}

/// Refuses a connection before any hello is checked: reads the peer's first record (so
/// that closing does not reset the connection under the reply), sends `refusal`, and
/// shuts down the sending half. Used where the port's own requirements fail before the
/// handshake, such as a plain connection on a port that requires TLS
/// ([`HandshakeRefusal::TlsRequired`]). Returns [`WireError::Refused`] with `refusal`
/// once the refusal is sent, or the error that stopped it (a timeout after `timeout`).
pub async fn refuse_handshake<T>(
    io: &mut T,
    refusal: HandshakeRefusal,
    timeout: Duration,
) -> WireError
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = with_timeout(timeout, async {
        // Whatever the record says, the answer is the same; a bad magic stops the read
        // early and is answered the same way.
        read_record(io).await?;
        let reply = HelloReply::Refused(refusal.clone()).encode();
        io.write_all(&reply).await.map_err(closed_or_io)?;
        io.shutdown().await.map_err(closed_or_io)?;
        Ok(())
    });
    match exchange.await {
        Ok(()) => WireError::Refused(refusal),
        Err(e) => e,
    }
}

fn ensure_first<T>(framed: &Framed<T, LengthDelimitedCodec>) -> Result<(), WireError> {
    if framed.read_buffer().is_empty() && framed.write_buffer().is_empty() {
        Ok(())
    } else {
        Err(WireError::HandshakeNotFirst)
    }
}

async fn with_timeout<F, R>(timeout: Duration, fut: F) -> Result<R, WireError>
where
    F: Future<Output = Result<R, WireError>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_elapsed) => Err(WireError::HandshakeTimeout {
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// Reads one record with exact-size reads. If the magic is wrong, stops after it and
/// returns those 4 bytes, so that decoding reports the bad magic without waiting for more.
async fn read_record<T: AsyncRead + Unpin>(io: &mut T) -> Result<Vec<u8>, WireError> {
    let mut record = vec![0u8; RECORD_HEADER_BYTES];
    io.read_exact(&mut record[..MAGIC.len()])
        .await
        .map_err(closed_or_io)?;
    if layout::body_len(&record[..MAGIC.len()]).is_err() {
        record.truncate(MAGIC.len());
        return Ok(record);
    }
    io.read_exact(&mut record[MAGIC.len()..])
        .await
        .map_err(closed_or_io)?;
    let Ok(Some(body_bytes)) = layout::body_len(&record) else {
        return Ok(record);
    };
    // At most u16::MAX bytes: the length field is a u16.
    record.resize(RECORD_HEADER_BYTES + body_bytes, 0);
    io.read_exact(&mut record[RECORD_HEADER_BYTES..])
        .await
        .map_err(closed_or_io)?;
    Ok(record)
}

fn closed_or_io(e: std::io::Error) -> WireError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset => WireError::ClosedDuringHandshake,
        _ => WireError::Io(e),
    }
}
