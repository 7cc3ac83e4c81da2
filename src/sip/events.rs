//! What the signaling core tells the recording path about calls ([`CallEvent`]), and what the
//! recording path asks of the live path in return ([`CallCommand`], [`MediaCommand`]).
//!
//! Both directions are plain values on channels: the proxy sends events without waiting
//! (`std::sync::mpsc`, drained by the recording path's own thread), and commands reach the
//! proxy's core task, which applies them between messages. Neither side ever blocks the other,
//! so the live path never waits on recording (DESIGN.md invariant 3). Personal data travels as
//! [`Pii`]; DTMF digits as [`Digit`], which never prints its value.

use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use crate::dtmf::Digit;
use crate::media::tap::TapFrame;
use crate::pii::Pii;
use crate::sip::sdp::Leg;

/// A consent signal from a trusted source (PBX header, API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsentSignal {
    Granted,
    Declined,
    Revoked,
}

impl std::str::FromStr for ConsentSignal {
    type Err = ();
    /// `granted`, `declined` or `revoked`, any case, surrounding blanks ignored.
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim().to_ascii_lowercase().as_str() {
            "granted" => Ok(ConsentSignal::Granted),
            "declined" => Ok(ConsentSignal::Declined),
            "revoked" => Ok(ConsentSignal::Revoked),
            _ => Err(()),
        }
    }
}

impl ConsentSignal {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentSignal::Granted => "granted",
            ConsentSignal::Declined => "declined",
            ConsentSignal::Revoked => "revoked",
        }
    }
}

/// A call's life as the proxy sees it, for the recording path.
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// An initial INVITE was accepted: forwarded to `route`'s upstream, or (`held`) kept by
    /// callveil while its IVR asks for consent; the INVITE goes on after
    /// [`CallCommand::Release`].
    Started {
        call_id: String,
        /// The caller's number or URI user part (P-Asserted-Identity, else From).
        caller: Pii<String>,
        /// The Request-URI user part (dialled number).
        callee: Pii<String>,
        /// Name of the matched route (`Route::name`).
        route: String,
        held: bool,
    },
    /// The initial INVITE got a 2xx.
    Answered { call_id: String },
    /// The call is over (BYE, CANCEL, failure, timeout, [`CallCommand::End`]).
    Ended { call_id: String },
    /// `consent.header` on a message from a trusted upstream (the PBX leg; never the carrier).
    Consent { call_id: String, signal: ConsentSignal },
    /// `X-Retention-Class` on a message from a trusted upstream.
    RetentionClass { call_id: String, class: String },
    /// A key press carried in SIP INFO (`application/dtmf-relay` or `application/dtmf`).
    InfoDtmf { call_id: String, leg: Leg, digit: Digit, duration_ms: u32 },
}

/// What the recording path (consent gate, IVR) asks of the live path.
#[derive(Debug)]
pub enum CallCommand {
    /// Forward an INVITE held for the IVR: the consent question is over (whatever the answer).
    Release { call_id: String },
    /// End the call on both legs (BYE when answered, else CANCEL / 480 to the caller).
    End { call_id: String, reason: String },
    /// Secure entry on or off (the API's request): the proxy stops forwarding the caller's INFO
    /// digits and the relay suppresses their telephone-events and tones toward the callee.
    SecureEntry { call_id: String, on: bool },
    /// For the media anchor.
    Media(MediaCommand),
}

/// Media actions on one call, applied by the media anchor.
#[derive(Debug)]
pub enum MediaCommand {
    /// Every anchored audio stream of the call, both legs, feeds `sink` from now on (received
    /// packets, whether or not they can be forwarded yet).
    OpenTap { call_id: String, sink: SyncSender<TapFrame> },
    /// Stop feeding the call's tap.
    CloseTap { call_id: String },
    /// Play 8 kHz mono PCM16 toward `leg` (IVR prompts) in 20 ms RTP packets, in the codec
    /// negotiated with that leg, replacing whatever was playing.
    Play { call_id: String, leg: Leg, pcm: Arc<[i16]> },
    /// Stop playing toward `leg`.
    StopPlay { call_id: String, leg: Leg },
    /// Secure entry: suppress the caller's DTMF toward the agent (callee) leg while on.
    SecureEntry { call_id: String, on: bool },
}
