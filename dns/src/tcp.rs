//! DNS over TCP with bounds: at most `max_connections` at once (more are closed at accept),
//! an idle limit between and within messages, a cap on queries per connection. Each message
//! goes through the same [`ZoneRequestHandler`] as UDP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::op::{Header, MessageType};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::handler::ZoneRequestHandler;
use crate::Limits;

/// Accepts and serves connections until `shutdown`; then gives open connections a second to
/// finish and closes the rest.
pub(crate) async fn serve(
    listener: TcpListener,
    handler: Arc<ZoneRequestHandler>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.tcp_max_connections));
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: pause rather than spin.
                    tracing::warn!(%error, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.tcp_max_connections, "DNS TCP connection limit reached; closing");
            continue;
        };
        let handler = handler.clone();
        conns.spawn(async move {
            let _permit = permit;
            connection(stream, peer, &handler, &limits).await;
        });
        while conns.try_join_next().is_some() {}
    }
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    conns.abort_all();
}

/// One connection: length-prefixed messages (RFC 1035 section 4.2.2), answered in order.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: &ZoneRequestHandler,
    limits: &Limits,
) {
    let idle = limits.tcp_idle_timeout;
    for _ in 0..limits.tcp_max_queries_per_connection {
        let mut len = [0u8; 2];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let len = usize::from(u16::from_be_bytes(len));
        let mut message = vec![0u8; len];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut message)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(answer) = respond(handler, message, peer).await else {
            // Not a query we answer (shorter than a header, or a response): drop the peer.
            return;
        };
        let Ok(answer_len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&answer_len.to_be_bytes());
        framed.extend_from_slice(&answer);
        if !matches!(
            tokio::time::timeout(idle, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// The wire answer to one message, or `None` when it gets none.
pub(crate) async fn respond(
    handler: &ZoneRequestHandler,
    message: Vec<u8>,
    peer: SocketAddr,
) -> Option<Vec<u8>> {
    let capture = Capture::default();
    // Shorter than a header: not DNS; a response: never answered (no reflection).
    let header = Header::read(&mut BinDecoder::new(&message)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    match Request::from_bytes(message, peer, Protocol::Tcp) {
        Ok(request) => {
            handler
                .handle_request::<_, TokioTime>(&request, capture.clone())
                .await;
        }
        Err(error) => {
            // The header decodes but the rest does not: FORMERR, as over UDP.
            tracing::debug!(%peer, %error, "malformed DNS message over TCP");
            let queries = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
            let response = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            capture.clone().send_response(response).await.ok()?;
        }
    }
    capture.take()
}

/// A `ResponseHandler` that keeps the encoded answer for the connection loop to write.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Vec<u8>>>>);

impl Capture {
    fn take(&self) -> Option<Vec<u8>> {
        match self.0.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(u16::MAX);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| NetError::from(e.to_string()))?;
        match self.0.lock() {
            Ok(mut g) => *g = Some(bytes),
            Err(poisoned) => *poisoned.into_inner() = Some(bytes),
        }
        Ok(info)
    }
}
