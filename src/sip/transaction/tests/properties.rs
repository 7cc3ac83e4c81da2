//! Arbitrary input sequences: no panic, and the invariants every state machine in RFC 3261 §17
//! shares hold after each step.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::sip::transaction::{ClientState, ClientTransaction, Kind, ServerState, ServerTransaction, Timers};

#[derive(Debug, Clone)]
enum Op {
    /// Client: a response arrives. Server: the TU sends one.
    Code(u16),
    /// Client: the TU provides the ACK. Server: an ACK arrives.
    Ack,
    /// Server: the request is retransmitted. Client: nothing.
    Retransmit,
    /// Time passes, then the driver calls `handle_timeout`.
    Wait(u64),
    TransportError,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Mostly real codes, sometimes garbage.
        3 => prop_oneof![100u16..700, any::<u16>()].prop_map(Op::Code),
        1 => Just(Op::Ack),
        1 => Just(Op::Retransmit),
        3 => (0u64..40_000).prop_map(Op::Wait),
        1 => Just(Op::TransportError),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Invite), Just(Kind::NonInvite)]
}

fn client_rank(s: ClientState) -> u8 {
    match s {
        ClientState::Calling | ClientState::Trying => 0,
        ClientState::Proceeding => 1,
        ClientState::Accepted | ClientState::Completed => 2,
        ClientState::Terminated => 3,
    }
}

fn server_rank(s: ServerState) -> u8 {
    match s {
        ServerState::Trying => 0,
        ServerState::Proceeding => 1,
        ServerState::Accepted | ServerState::Completed => 2,
        ServerState::Confirmed => 3,
        ServerState::Terminated => 4,
    }
}

proptest! {
    #[test]
    fn client_invariants(kind in kind(), reliable in any::<bool>(), ops in prop::collection::vec(op(), 0..40)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut t = ClientTransaction::new(kind, t0, b"REQ".to_vec(), reliable, Timers::default());
        let mut rank = client_rank(t.state());
        let mut timeouts = 0;
        let mut final_code = None;
        for op in ops {
            match op {
                Op::Code(code) => { t.on_response(now, code); }
                Op::Ack => t.set_ack(b"ACK".to_vec()),
                Op::Retransmit => {}
                Op::TransportError => t.on_transport_error(),
                Op::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    if t.handle_timeout(now).is_some() { timeouts += 1; }
                    prop_assert!(t.poll_timeout().is_none_or(|at| at > now), "a due timer survived handle_timeout");
                }
            }
            let sent = std::iter::from_fn(|| t.poll_transmit()).count();
            prop_assert!(sent <= 1, "one input queued {sent} messages");
            prop_assert!(client_rank(t.state()) >= rank, "state went backwards to {:?}", t.state());
            rank = client_rank(t.state());
            if t.is_terminated() { prop_assert_eq!(t.poll_timeout(), None); }
            if final_code.is_some() { prop_assert_eq!(t.final_code(), final_code); }
            final_code = t.final_code();
            prop_assert!(!t.needs_ack() || (kind == Kind::Invite && final_code.is_some_and(|c| c >= 300)));
        }
        prop_assert!(timeouts <= 1);
    }

    #[test]
    fn server_invariants(kind in kind(), reliable in any::<bool>(), ops in prop::collection::vec(op(), 0..40)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut t = ServerTransaction::new(kind, t0, reliable, Timers::default());
        let mut rank = server_rank(t.state());
        let mut timeouts = 0;
        let mut final_sent = None;
        for op in ops {
            match op {
                Op::Code(code) => {
                    let before = t.state();
                    let legal = t.send_response(now, code, code.to_be_bytes().to_vec());
                    if !legal { prop_assert_eq!(t.state(), before, "an ignored response changed state"); }
                }
                Op::Ack => { t.on_ack(now); }
                Op::Retransmit => t.on_retransmit(now),
                Op::TransportError => t.on_transport_error(),
                Op::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    if t.handle_timeout(now).is_some() { timeouts += 1; }
                    prop_assert!(t.poll_timeout().is_none_or(|at| at > now), "a due timer survived handle_timeout");
                }
            }
            let sent = std::iter::from_fn(|| t.poll_transmit()).count();
            prop_assert!(sent <= 1, "one input queued {sent} messages");
            prop_assert!(server_rank(t.state()) >= rank, "state went backwards to {:?}", t.state());
            rank = server_rank(t.state());
            if t.is_terminated() { prop_assert_eq!(t.poll_timeout(), None); }
            if final_sent.is_some() { prop_assert_eq!(t.final_sent(), final_sent); }
            final_sent = t.final_sent();
            if kind == Kind::NonInvite {
                prop_assert!(!matches!(t.state(), ServerState::Accepted | ServerState::Confirmed));
            }
        }
        prop_assert!(timeouts <= 1);
    }
}
