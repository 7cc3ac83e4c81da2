//! Span planner: keeps one channel's redaction spans in media time, padded (token times from ASR
//! are inexact by up to ~0.8 s, FACTS.md §2) and merged where spans of the same kind overlap.
//!
//! Spans of different kinds are kept apart even when they overlap, so reports and metrics can
//! say what was removed; the masker mutes their union. The planner does not touch samples.

use crate::vault::sink::SpanKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedSpan {
    pub start_ms: u64,
    pub end_ms: u64,
    pub kind: SpanKind,
}

#[derive(Debug, Default)]
pub struct SpanPlan {
    spans: Vec<PlannedSpan>,
}

impl SpanPlan {
    /// Adds `[start_ms, end_ms)` padded by `pad_ms` on both sides, merged with overlapping or
    /// touching spans of the same kind.
    pub fn add(&mut self, start_ms: u64, end_ms: u64, kind: SpanKind, pad_ms: u64) {
        let mut s =
            PlannedSpan { start_ms: start_ms.saturating_sub(pad_ms), end_ms: end_ms.saturating_add(pad_ms), kind };
        if s.end_ms <= s.start_ms {
            return;
        }
        self.spans.retain(|o| {
            let overlaps = o.kind == kind && o.start_ms <= s.end_ms && s.start_ms <= o.end_ms;
            if overlaps {
                s.start_ms = s.start_ms.min(o.start_ms);
                s.end_ms = s.end_ms.max(o.end_ms);
            }
            !overlaps
        });
        let at = self.spans.partition_point(|o| o.start_ms <= s.start_ms);
        self.spans.insert(at, s);
    }

    /// Spans overlapping `[start_ms, end_ms)`.
    pub fn overlapping(&self, start_ms: u64, end_ms: u64) -> impl Iterator<Item = &PlannedSpan> {
        self.spans.iter().filter(move |s| s.start_ms < end_ms && start_ms < s.end_ms)
    }

    /// Removes and returns the spans that end at or before `ms` (they can no longer grow).
    pub fn take_done(&mut self, ms: u64) -> Vec<PlannedSpan> {
        let (done, keep): (Vec<_>, Vec<_>) = self.spans.iter().partition(|s| s.end_ms <= ms);
        self.spans = keep;
        done
    }

    /// Removes and returns every span, the last ones clipped to `end_ms` (the channel's length).
    pub fn take_all(&mut self, end_ms: u64) -> Vec<PlannedSpan> {
        std::mem::take(&mut self.spans)
            .into_iter()
            .filter(|s| s.start_ms < end_ms)
            .map(|mut s| {
                s.end_ms = s.end_ms.min(end_ms);
                s
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_and_merges_same_kind() {
        let mut p = SpanPlan::default();
        p.add(1_000, 2_000, SpanKind::Pan, 500);
        p.add(2_800, 3_000, SpanKind::Pan, 500);
        p.add(200, 300, SpanKind::Cvv, 500);
        let all = p.take_all(10_000);
        assert_eq!(
            all,
            vec![
                PlannedSpan { start_ms: 0, end_ms: 800, kind: SpanKind::Cvv },
                PlannedSpan { start_ms: 500, end_ms: 3_500, kind: SpanKind::Pan },
            ]
        );
    }

    #[test]
    fn take_done_and_clip() {
        let mut p = SpanPlan::default();
        p.add(1_000, 2_000, SpanKind::Digits, 0);
        p.add(5_000, 9_000, SpanKind::Digits, 0);
        assert_eq!(p.take_done(3_000).len(), 1);
        assert_eq!(p.overlapping(4_000, 6_000).count(), 1);
        assert_eq!(p.take_all(8_000), vec![PlannedSpan { start_ms: 5_000, end_ms: 8_000, kind: SpanKind::Digits }]);
        assert!(p.is_empty());
    }
}
