//! The hand-off between the HTTP call endpoints (`POST /calls/{call_id}/consent` and
//! `POST /calls/{call_id}/secure-entry`, served by `net::metrics_http`) and the recording
//! service's thread: [`ConsentApi`] is a cheap clonable handle that passes a request over a
//! channel and waits (asynchronously, bounded) for the service to say whether it knows the call.
//!
//! It does not parse HTTP, decide consent or log call ids with signals (a call id is not
//! personal data, but the endpoint is the place that answers, not this module).

use std::sync::mpsc;
use std::time::Duration;

use crate::sip::events::ConsentSignal;

/// What the API asks of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// A consent decision or its withdrawal (`api` consent mode; revocation in any mode).
    Consent(ConsentSignal),
    /// Secure entry on or off: the caller's DTMF is kept from the agent leg while on.
    SecureEntry(bool),
}

/// One request from the API, answered with whether the call is known.
pub struct ApiSignal {
    pub call_id: String,
    pub request: ApiRequest,
    pub reply: tokio::sync::oneshot::Sender<bool>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("no such call")]
    UnknownCall,
    #[error("the recording service is not running")]
    Unavailable,
    #[error("the recording service did not answer in time")]
    Timeout,
}

/// Handle the HTTP server uses to pass consent signals to the recording service.
#[derive(Clone)]
pub struct ConsentApi {
    tx: mpsc::Sender<ApiSignal>,
}

/// How long the endpoint waits for the service (it answers within one loop turn, milliseconds).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

impl ConsentApi {
    pub fn new(tx: mpsc::Sender<ApiSignal>) -> ConsentApi {
        ConsentApi { tx }
    }

    /// A new handle and the receiving end the service drains.
    pub fn channel() -> (ConsentApi, mpsc::Receiver<ApiSignal>) {
        let (tx, rx) = mpsc::channel();
        (ConsentApi { tx }, rx)
    }

    /// Passes `signal` for `call_id` to the service and waits for its answer.
    pub async fn signal(&self, call_id: &str, signal: ConsentSignal) -> Result<(), ApiError> {
        self.request(call_id, ApiRequest::Consent(signal)).await
    }

    /// Turns secure entry on or off for `call_id` and waits for the service's answer.
    pub async fn secure_entry(&self, call_id: &str, on: bool) -> Result<(), ApiError> {
        self.request(call_id, ApiRequest::SecureEntry(on)).await
    }

    async fn request(&self, call_id: &str, request: ApiRequest) -> Result<(), ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(ApiSignal { call_id: call_id.to_string(), request, reply }).map_err(|_| ApiError::Unavailable)?;
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(ApiError::UnknownCall),
            Ok(Err(_)) => Err(ApiError::Unavailable),
            Err(_) => Err(ApiError::Timeout),
        }
    }
}
