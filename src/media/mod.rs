//! Media anchoring: every call's RTP and RTCP flows through callveil so it can be recorded.
//!
//! [`anchor::Anchor`] implements the proxy's [`crate::sip::sdp::MediaAnchor`]: it reads each SDP
//! offer and answer ([`sdp`]), allocates port pairs ([`ports`]) and rewrites the description so
//! both legs send to callveil, then hands the stream to the media driver (`net::rtp`) without
//! waiting. The driver runs one sans-IO [`relay::RelayCore`] per shard thread; [`rtp`] reads
//! packet headers without copying. Nothing here touches a socket or reads a clock.
//!
//! Not here: signaling (`sip`), consent, transcription or storage. The recording path only ever
//! sees what the tap hands it.

pub mod anchor;
pub mod g711;
pub mod playout;
pub mod ports;
pub mod relay;
pub mod rtp;
pub mod sdp;
pub mod secure;
pub mod srtp;
pub mod tap;
