//! [`ZoneRequestHandler`]: hickory-server's `RequestHandler` over the zone. It checks the
//! message (opcode, one question, EDNS version), asks [`crate::answer`] and sends the answer
//! with AA set for names in the zone and RA never set.

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::answer::answer;
use crate::zone::ZoneHandle;

/// Largest UDP answer we offer, whatever the client advertises (the DNS flag day 2020 size,
/// which avoids IP fragmentation); larger answers are truncated and retried over TCP.
const MAX_UDP_PAYLOAD: u16 = 1232;

/// The zone as a hickory request handler.
#[derive(Clone, Debug)]
pub struct ZoneRequestHandler {
    zone: ZoneHandle,
}

impl ZoneRequestHandler {
    /// A handler answering from `zone`.
    pub fn new(zone: ZoneHandle) -> Self {
        ZoneRequestHandler { zone }
    }
}

#[async_trait::async_trait]
impl RequestHandler for ZoneRequestHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = false;

        let response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            edns
        });
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &response_edns {
            builder.edns(edns);
        }

        let code = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else {
            None
        };
        let result = match (code, request.request_info()) {
            (Some(code), _) => {
                metadata.response_code = code;
                response_handle
                    .send_response(builder.build_no_records(metadata))
                    .await
            }
            (None, Err(_)) => {
                // Not exactly one question.
                metadata.response_code = ResponseCode::FormErr;
                response_handle
                    .send_response(builder.build_no_records(metadata))
                    .await
            }
            (None, Ok(info)) => {
                let snap = self.zone.snapshot();
                let query = info.query.original();
                let ans = answer(
                    self.zone.fixed(),
                    &snap,
                    query.name(),
                    query.query_type(),
                    query.query_class(),
                );
                metadata.response_code = ans.code;
                metadata.authoritative = ans.authoritative;
                let response = builder.build(
                    metadata,
                    ans.answers.iter(),
                    ans.authority.iter(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
                response_handle.send_response(response).await
            }
        };
        match result {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, src = %request.src(), "sending a DNS answer failed");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
