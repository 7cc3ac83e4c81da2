//! Streaming detectors over timestamped ASR words: card numbers, security codes, expiry dates,
//! national IDs, IBANs, SSNs and the "long digit run" fail-safe.
//!
//! Words arrive window by window, in time order, per channel. Words are normalised (see
//! `normalize`) into digit groups, letters, keywords and loose digit-like words; consecutive
//! digit-like tokens (gaps under `max_gap_ms`) form a *run*. A run is decided once it is closed
//! (a non-digit word follows, or the transcript is known to be complete far enough past its last
//! token): check digits (Luhn + IIN, mod-97, mod-23, mod-11), a keyword context that was opened
//! just before it ("card number", "código de seguridad": the context keeps going while digit-like
//! words continue, so misheard digits are caught too, FACTS.md §2), or its length
//! (>= `min_digits`). Words of a run that is still open are held back: [`StreamDetector::horizon_ms`]
//! tells the pipeline how far audio and transcript may be released.
//!
//! This module decides *what* and *when*; it does not pad or mask audio (`plan`, `mask`) and it
//! never logs or prints a word or digit.

use crate::redact::checks;
use crate::redact::normalize::{normalize, Context, Lang, TokKind, Token};
use crate::transcribe::Word;
use crate::vault::sink::SpanKind;

/// Which detectors run (configurable per deployment; see `[redaction]` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detectors {
    pub pan: bool,
    pub cvv: bool,
    pub expiry: bool,
    pub national_id: bool,
    pub iban: bool,
    pub ssn: bool,
    pub digits: bool,
}

impl Default for Detectors {
    fn default() -> Self {
        Detectors { pan: true, cvv: true, expiry: true, national_id: true, iban: true, ssn: true, digits: true }
    }
}

impl Detectors {
    /// From names as in the config (`pan`, `cvv`, `expiry`, `national_id`, `iban`, `ssn`, `digits`).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Detectors, String> {
        let mut d = Detectors {
            pan: false,
            cvv: false,
            expiry: false,
            national_id: false,
            iban: false,
            ssn: false,
            digits: false,
        };
        for n in names {
            match n.as_ref() {
                "pan" => d.pan = true,
                "cvv" => d.cvv = true,
                "expiry" => d.expiry = true,
                "national_id" => d.national_id = true,
                "iban" => d.iban = true,
                "ssn" => d.ssn = true,
                "digits" => d.digits = true,
                other => {
                    return Err(format!(
                        "unknown detector `{other}` (expected pan, cvv, expiry, national_id, iban, ssn, digits)"
                    ))
                }
            }
        }
        Ok(d)
    }
}

#[derive(Clone, Debug)]
pub struct DetectConfig {
    pub lang: Lang,
    pub detectors: Detectors,
    /// Fail-safe: a run of at least this many digits is redacted whatever its check digits say.
    pub min_digits: usize,
    /// Longest pause between two tokens of one run.
    pub max_gap_ms: u64,
    /// How long a keyword keeps its context open waiting for the first digit.
    pub context_ms: u64,
    /// How long a context stays open after its last digit-like token.
    pub context_hold_ms: u64,
    /// Unrecognised words tolerated inside a run while a context is open (ASR garbage).
    pub context_slack: usize,
    /// After a card number, security code or expiry date, this long a *payment context* stays
    /// open in which any number of two or more digits is redacted (as expiry, security code or
    /// digits), because the other card data follows and its keywords are what ASR garbles
    /// ("the estimated" for "the expiry date"). 0 turns it off.
    pub payment_context_ms: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            lang: Lang::En,
            detectors: Detectors::default(),
            min_digits: 9,
            max_gap_ms: 1_500,
            context_ms: 8_000,
            context_hold_ms: 3_000,
            context_slack: 2,
            payment_context_ms: 15_000,
        }
    }
}

/// A word with the redaction decided for it (None: keep).
#[derive(Clone, Debug)]
pub struct MarkedWord {
    pub word: Word,
    pub mark: Option<SpanKind>,
}

/// A detection in media time, before padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    pub start_ms: u64,
    pub end_ms: u64,
    pub kind: SpanKind,
}

/// What a call to the detector settled: words that will not change any more, and detections.
#[derive(Debug, Default)]
pub struct Settled {
    pub words: Vec<MarkedWord>,
    pub detections: Vec<Detection>,
}

#[derive(Clone, Copy, Debug)]
struct Ctx {
    kind: SpanKind,
    until_ms: u64,
    /// End of the keyword that opened it, while no run has used it yet: the first run's span
    /// starts there, because ASR times the first digit late (up to ~0.8 s, FACTS.md §2).
    keyword_end: Option<u64>,
}

/// Per-channel streaming detector.
pub struct StreamDetector {
    cfg: DetectConfig,
    pending: Vec<Word>,
    ctx: Option<Ctx>,
    complete_ms: u64,
    /// End of the payment context (see [`DetectConfig::payment_context_ms`]).
    payment_until: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// More words may come: an unclosed run at the end is held back.
    Streaming,
    /// End of stream: decide everything normally.
    Final,
    /// The transcript is broken after this point (unverified window, gap): an unclosed run is
    /// redacted whatever its length, because its continuation was never heard.
    Break,
}

impl StreamDetector {
    pub fn new(cfg: DetectConfig) -> StreamDetector {
        StreamDetector { cfg, pending: Vec::new(), ctx: None, complete_ms: 0, payment_until: None }
    }

    /// Adds the next window's words (time order) and says the transcript is complete up to
    /// `complete_ms` (the window's end).
    pub fn push(&mut self, words: Vec<Word>, complete_ms: u64) -> Settled {
        self.pending.extend(words);
        self.complete_ms = self.complete_ms.max(complete_ms);
        self.scan(Mode::Streaming)
    }

    /// End of the stream: settles everything.
    pub fn finish(&mut self) -> Settled {
        self.scan(Mode::Final)
    }

    /// The transcript cannot continue from here (a window was muted unverified, or the tap had a
    /// gap): settles everything, redacting any open run.
    pub fn break_stream(&mut self, resume_ms: u64) -> Settled {
        let s = self.scan(Mode::Break);
        self.complete_ms = self.complete_ms.max(resume_ms);
        // What was held for a keyword's number is released now, so a later run cannot reach back.
        if let Some(c) = &mut self.ctx {
            c.keyword_end = None;
        }
        s
    }

    /// Earliest time a detection still to come may start at: the first word not yet settled, or
    /// the end of a keyword whose context is still waiting for its number (a run after it is
    /// stretched back to the keyword). Audio from here on must stay held.
    pub fn horizon_ms(&self) -> Option<u64> {
        let word = self.pending.first().map(|w| w.start_ms);
        let keyword = self.ctx.filter(|c| c.until_ms >= self.complete_ms).and_then(|c| c.keyword_end);
        match (word, keyword) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Where a run starting at `start_ms` begins once stretched back over a hole in the
    /// transcript: when the word before it plausibly ended at `prev_end` and the run's first
    /// word starts well after that, ASR heard nothing there though someone spoke (whisper times
    /// each word until the next one starts, so the hole shows only as an overlong word). Near a
    /// number that is most likely its first digits, unrecognised.
    fn stretch_back(&self, start_ms: u64, prev_end: Option<u64>) -> u64 {
        match prev_end {
            Some(p) if p < start_ms => p.max(start_ms.saturating_sub(STRETCH_FACTOR * self.cfg.max_gap_ms)),
            _ => start_ms,
        }
    }

    fn ctx_at(&self, t: u64) -> Option<Ctx> {
        self.ctx.filter(|c| t <= c.until_ms)
    }

    /// The span kind a keyword context stands for, if that detector is on.
    fn ctx_kind(&self, c: Context) -> Option<SpanKind> {
        let d = &self.cfg.detectors;
        match c {
            Context::Card if d.pan => Some(SpanKind::Pan),
            Context::Security if d.cvv => Some(SpanKind::Cvv),
            Context::Expiry if d.expiry => Some(SpanKind::Expiry),
            Context::NationalId if d.national_id => Some(SpanKind::NationalId),
            Context::Ssn if d.ssn => Some(SpanKind::Ssn),
            Context::Iban if d.iban => Some(SpanKind::Iban),
            _ => None,
        }
    }

    fn scan(&mut self, mode: Mode) -> Settled {
        let toks = normalize(self.cfg.lang, &self.pending);
        let mut out = Settled::default();
        let mut marks: Vec<Option<SpanKind>> = vec![None; self.pending.len()];
        let mut settle_word = self.pending.len();
        // The last run of a few digits that was not redacted: (first token, last token).
        let mut suspect: Option<(usize, usize)> = None;
        // Tokens before this index belong to runs already decided.
        let mut floor = 0;
        let mut i = 0;
        while i < toks.len() {
            let t = &toks[i];
            match &t.kind {
                TokKind::Keyword(k) => {
                    self.ctx = self.ctx_kind(*k).map(|kind| Ctx {
                        kind,
                        until_ms: t.end_ms + self.cfg.context_ms,
                        keyword_end: Some(t.end_ms),
                    });
                    i += 1;
                    continue;
                }
                TokKind::Other => {
                    i += 1;
                    continue;
                }
                _ => {}
            }
            let ctx = self.ctx_at(t.start_ms);
            // After card data, homophones are digits as they are in a keyword's context.
            let Some(run) = self.collect_run(&toks, i, ctx.is_some() || self.in_payment(t.start_ms)) else {
                i += 1;
                continue;
            };
            // Homophones right before the first digit ("time free fix 2 2 7": five three six)
            // are the number's start; inside a context the run already starts at them.
            let s0 = if ctx.is_none() && matches!(t.kind, TokKind::Digits(_)) {
                words_before(&toks, i, floor, self.cfg.max_gap_ms, |k| *k == TokKind::Loose)
            } else {
                i
            };
            let closed = run.stopped || mode != Mode::Streaming || {
                let last_end = toks[run.last].end_ms;
                self.complete_ms >= last_end + self.cfg.max_gap_ms
            };
            if !closed {
                settle_word = toks[s0].first_word;
                break;
            }
            let in_payment = self.in_payment(t.start_ms);
            let (mut kind, uses_letters) = match self.decide(&toks[s0..=run.last], ctx.map(|c| c.kind), in_payment) {
                Some((k, l)) => (Some(k), l),
                None => (None, false),
            };
            if kind.is_none() && mode == Mode::Break && !run.stopped {
                kind = Some(SpanKind::Digits);
            }
            let digit_count: usize =
                toks[s0..=run.last].iter().map(|t| if let TokKind::Digits(d) = &t.kind { d.len() } else { 0 }).sum();
            if kind.is_none() && digit_count >= SUSPECT_DIGITS {
                // A fragment of a number ("4012888, hang on, ..."): held until enough words or
                // time have followed it that no redacted run can still claim it. ASR times a
                // many-digit token short, so words count as well as time.
                let words_after = toks.len() - run.last - 1;
                let until = toks[run.last].end_ms + FRAGMENT_HOLD_FACTOR * self.cfg.context_hold_ms;
                if mode == Mode::Streaming && words_after <= FRAGMENT_WORDS && self.complete_ms < until {
                    settle_word = toks[s0].first_word;
                    break;
                }
                suspect = Some((s0, run.last));
            }
            // Letters belong to the span only when an ID check used them ("X 1234567 L");
            // otherwise they are words like Portuguese "é" or English "a" next to a number.
            let (mut first, mut last) = (s0, run.last);
            if !uses_letters {
                while first < last && matches!(toks[first].kind, TokKind::Letter(_)) {
                    first += 1;
                }
                while last > first && matches!(toks[last].kind, TokKind::Letter(_)) {
                    last -= 1;
                }
            }
            let (mut start_ms, end_ms) = (toks[first].start_ms, toks[last].end_ms);
            if let (Some(_), Some(k)) = (kind, ctx.and_then(|c| c.keyword_end)) {
                start_ms = start_ms.min(k.max(start_ms.saturating_sub(self.cfg.max_gap_ms)));
            }
            if let (Some(_), Some((sf, sl))) = (kind, suspect) {
                // A redacted run claims the fragment just before it, and what lies between.
                let between = s0 - sl - 1;
                let near = toks[s0].start_ms <= toks[sl].end_ms + FRAGMENT_HOLD_FACTOR * self.cfg.context_hold_ms;
                if between <= FRAGMENT_WORDS && near {
                    first = sf;
                    start_ms = start_ms.min(toks[sf].start_ms);
                }
                suspect = None;
            }
            if kind.is_some() {
                let w = toks[first].first_word;
                // Only over words still pending: audio before them may have been released.
                let prev_end = w.checked_sub(1).map(|p| spoken_end(&self.pending[p]));
                start_ms = start_ms.min(self.stretch_back(toks[first].start_ms, prev_end));
                if in_payment {
                    // After card data the expiry and code are short numbers whose first digits
                    // ASR turns into words ("oh nine twenty seven" heard as "boat I in 20th"):
                    // the words just before such a number are masked with it.
                    let words = |k: &TokKind| matches!(k, TokKind::Other | TokKind::Loose | TokKind::Letter(_));
                    let k = words_before(&toks, first, floor, self.cfg.max_gap_ms, words);
                    start_ms = start_ms.min(toks[k].start_ms);
                }
            }
            if let Some(kind) = kind {
                for m in &mut marks[toks[first].first_word..=toks[last].last_word] {
                    *m = Some(kind);
                }
                out.detections.push(Detection { start_ms, end_ms, kind });
            }
            if let (Some(SpanKind::Pan | SpanKind::Cvv | SpanKind::Expiry), 1..) = (kind, self.cfg.payment_context_ms) {
                let until = end_ms + self.cfg.payment_context_ms;
                self.payment_until = Some(self.payment_until.map_or(until, |u| u.max(until)));
            }
            if let Some(kind) = kind {
                // A context lasts while digit-like words continue, and a redacted run opens one:
                // digits that follow it closely ("... 1 near 0 0 5") belong to the same number.
                self.ctx = Some(Ctx { kind, until_ms: end_ms + self.cfg.context_hold_ms, keyword_end: None });
            }
            i = run.last + 1;
            floor = i;
        }
        if mode == Mode::Streaming && settle_word == self.pending.len() {
            // Homophones at the very end may start a number the next window brings.
            let mut k = toks.len();
            while k > floor && toks.len() - k < BRIDGE_WORDS && toks[k - 1].kind == TokKind::Loose {
                k -= 1;
            }
            if k < toks.len() {
                settle_word = toks[k].first_word;
            }
        }
        let rest = self.pending.split_off(settle_word);
        let done = std::mem::replace(&mut self.pending, rest);
        out.words = done.into_iter().zip(marks).map(|(word, mark)| MarkedWord { word, mark }).collect();
        out
    }

    /// Collects the run starting at `toks[i]`, or None when `toks[i]` cannot start one.
    fn collect_run(&self, toks: &[Token], i: usize, in_ctx: bool) -> Option<Run> {
        let is_core = |t: &Token| matches!(t.kind, TokKind::Digits(_)) || (in_ctx && t.kind == TokKind::Loose);
        let mut last_real = None;
        let mut last_core = None;
        let mut last_end = toks[i].start_ms;
        let mut slack = 0;
        let mut letters = 0;
        let mut has_core = false;
        let mut j = i;
        let mut stopped = false;
        while j < toks.len() {
            let t = &toks[j];
            if j > i && t.start_ms.saturating_sub(last_end) > self.cfg.max_gap_ms {
                stopped = true;
                break;
            }
            if is_core(t) {
                has_core = true;
                letters = 0;
                slack = 0;
                last_real = Some(j);
                last_core = Some(j);
            } else if let TokKind::Letter(_) = t.kind {
                letters += 1;
                if letters > 4 {
                    stopped = true;
                    break;
                }
                if has_core {
                    last_real = Some(j);
                }
            } else if in_ctx && has_core && t.kind == TokKind::Other && slack < self.cfg.context_slack {
                slack += 1;
            } else if let Some(b) = last_core.filter(|_| !in_ctx).map(|c| self.bridge(toks, c, j)) {
                match b {
                    // Words ASR made of digits between two digits: the run goes on through them.
                    Bridge::To(next) => {
                        last_end = toks[next - 1].end_ms;
                        j = next;
                        continue;
                    }
                    // The digit that would close the bridge may be in the next window.
                    Bridge::Open => break,
                    Bridge::No => {
                        stopped = true;
                        break;
                    }
                }
            } else {
                stopped = true;
                break;
            }
            last_end = t.end_ms;
            j += 1;
        }
        if !has_core {
            // Letters alone are not a run, unless they are the last tokens and digits may follow.
            return (!stopped && j == toks.len()).then(|| Run { last: j - 1, stopped: false });
        }
        let last = last_real.unwrap_or(i);
        // Trailing letters count only when the run ended (a DNI letter), not while open.
        Some(Run { last, stopped: stopped || last + 1 < j })
    }

    /// Outside a context, a few words between two digits may still be digits ASR misheard: "5
    /// free 6" (a homophone), "uno no se es 4" (digits turned into other words). Returns the
    /// index of the digit token after the words starting at `j`, when they bridge `toks[last]`
    /// to it: homophones between any digits, other words only between digits read one by one
    /// (a number said digit by digit has no words inside it; "2 kids and 3" has, but stays far
    /// too short for any detector; "dois mil e ... cinco", a year, is not bridged), and never
    /// across a keyword, a letter or a long pause.
    fn bridge(&self, toks: &[Token], last: usize, j: usize) -> Bridge {
        let single = |t: &Token| matches!(&t.kind, TokKind::Digits(d) if d.len() == 1);
        let left = &toks[last];
        if !matches!(left.kind, TokKind::Digits(_)) {
            return Bridge::No;
        }
        let mut k = j;
        while k < toks.len() && k - j < BRIDGE_WORDS && matches!(toks[k].kind, TokKind::Loose | TokKind::Other) {
            k += 1;
        }
        let within = |t: &Token| t.start_ms.saturating_sub(left.start_ms) <= self.cfg.max_gap_ms;
        if k == j || !within(&toks[k - 1]) {
            return Bridge::No;
        }
        let homophones = toks[j..k].iter().all(|t| t.kind == TokKind::Loose);
        match toks.get(k) {
            None if k - j < BRIDGE_WORDS => Bridge::Open,
            Some(right)
                if matches!(right.kind, TokKind::Digits(_))
                    && within(right)
                    && (homophones || (single(left) && single(right))) =>
            {
                Bridge::To(k)
            }
            _ => Bridge::No,
        }
    }

    /// The kind, and whether letters took part in the match.
    fn in_payment(&self, t: u64) -> bool {
        self.payment_until.is_some_and(|u| t <= u)
    }

    fn decide(&self, toks: &[Token], ctx: Option<SpanKind>, in_payment: bool) -> Option<(SpanKind, bool)> {
        let d = &self.cfg.detectors;
        let mut digits = String::new();
        let mut alnum = String::new();
        let mut core = 0;
        // Words inside the run that may stand for digits (homophones, ASR garbage between digits).
        let mut unknown = 0;
        let mut loose = 0;
        let is_core = |t: &Token| matches!(t.kind, TokKind::Digits(_) | TokKind::Loose);
        let first_core = toks.iter().position(is_core).unwrap_or(0);
        let last_core = toks.iter().rposition(is_core).unwrap_or(0);
        for (k, t) in toks.iter().enumerate() {
            match &t.kind {
                TokKind::Digits(s) => {
                    digits.push_str(s);
                    alnum.push_str(s);
                    core += 1;
                }
                TokKind::Letter(c) => {
                    alnum.push(*c);
                    // A letter between digits ("7 o 9 o 5": Spanish "o" for a digit) may be one.
                    if (first_core..last_core).contains(&k) {
                        unknown += 1;
                    }
                }
                TokKind::Loose => {
                    core += 1;
                    unknown += 1;
                    loose += 1;
                }
                TokKind::Other => unknown += 1,
                TokKind::Keyword(_) => {}
            }
        }
        if core == 0 {
            return None;
        }
        if d.pan && checks::find_pan(&digits) {
            return Some((SpanKind::Pan, false));
        }
        let windows = |n: usize| (0..alnum.len().saturating_sub(n - 1)).map(move |s| s..s + n);
        if d.iban && (15..=34).any(|n| windows(n).any(|r| checks::is_iban(&alnum[r]))) {
            return Some((SpanKind::Iban, true));
        }
        if d.national_id && windows(9).any(|r| checks::is_dni_or_nie(&alnum[r.clone()]) || checks::is_nino(&alnum[r])) {
            return Some((SpanKind::NationalId, true));
        }
        // An account or IBAN context covers account-length numbers only: "my account was charged
        // 50 dollars" is not an account number.
        if let Some(k) = ctx.filter(|&k| k != SpanKind::Iban || digits.len() >= IBAN_CONTEXT_MIN_DIGITS) {
            return Some((k, false));
        }
        // A homophone counts here: "nine one four" is heard as "dying one for".
        if in_payment && !digits.is_empty() && digits.len() + loose >= 2 {
            let month = digits.get(..2).and_then(|m| m.parse::<u8>().ok()).is_some_and(|m| (1..=12).contains(&m));
            if d.expiry && digits.len() == 4 && month {
                return Some((SpanKind::Expiry, false));
            }
            if d.cvv && (3..=4).contains(&digits.len()) {
                return Some((SpanKind::Cvv, false));
            }
            if d.digits {
                return Some((SpanKind::Digits, false));
            }
        }
        if digits.len() == 9 {
            if d.national_id && self.cfg.lang == Lang::Pt && checks::is_pt_nif(&digits) {
                return Some((SpanKind::NationalId, false));
            }
            if d.ssn && self.cfg.lang == Lang::En && checks::is_ssn(&digits) {
                return Some((SpanKind::Ssn, false));
            }
        }
        if d.digits && digits.len() >= self.cfg.min_digits {
            return Some((SpanKind::Digits, false));
        }
        // The fail-safe exists because ASR drops digits; it counts what ASR lost too: words that
        // stand for digits, and one digit more when the run's rhythm shows a hole. Such a run
        // must still be mostly real digits, as a number read out is ("we won 3 to 1, then lost 2
        // to 4, and drew 1 to 1" is not).
        let lost = usize::from(dropped_digit(toks));
        let counted = digits.len() + unknown + lost;
        let mostly_digits = digits.len() >= MIN_REAL_DIGITS.min(self.cfg.min_digits) && unknown < digits.len();
        // Spanish IDs whose check letter ASR lost or misheard are still IDs: 8 digits (DNI), or
        // X, Y or Z and 7 digits (NIE).
        if d.national_id && self.cfg.lang == Lang::Es && mostly_digits {
            let nie = matches!(toks.first().map(|t| &t.kind), Some(TokKind::Letter('X' | 'Y' | 'Z')));
            if counted >= 8 || (nie && counted >= 7) {
                return Some((SpanKind::NationalId, nie));
            }
        }
        if d.digits && counted >= self.cfg.min_digits && mostly_digits {
            return Some((SpanKind::Digits, false));
        }
        None
    }
}

/// Whether a run read digit by digit shows a digit ASR dropped: one step between word onsets
/// much longer than the run's usual step (Whisper writes "2, 2" as "2", or swallows a digit into
/// the next word, and DTW times the next digit where it was said).
fn dropped_digit(toks: &[Token]) -> bool {
    let onsets: Vec<u64> = toks
        .iter()
        .filter(|t| matches!(&t.kind, TokKind::Digits(d) if d.len() == 1) || t.kind == TokKind::Loose)
        .map(|t| t.start_ms)
        .collect();
    if onsets.len() < RHYTHM_MIN_DIGITS {
        return false;
    }
    let mut steps: Vec<u64> = onsets.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    let longest = steps.iter().copied().max().unwrap_or(0);
    steps.sort_unstable();
    let median = steps[steps.len() / 2];
    median > 0 && longest * 5 >= median * 8
}

/// Where a word plausibly ended: its onset plus what its letters take to say, at most its given
/// end (which is the next word's onset).
fn spoken_end(w: &Word) -> u64 {
    let letters = w.text.expose().chars().filter(|c| c.is_alphanumeric()).count() as u64;
    w.end_ms.min(w.start_ms + WORD_BASE_MS + WORD_PER_LETTER_MS * letters)
}

/// A word's plausible length: this much plus [`WORD_PER_LETTER_MS`] per letter (slow speech).
const WORD_BASE_MS: u64 = 200;
const WORD_PER_LETTER_MS: u64 = 90;
/// A run stretches back over a hole before it by at most this many `max_gap_ms`.
const STRETCH_FACTOR: u64 = 2;

/// The first of up to [`BRIDGE_WORDS`] tokens right before `toks[i]` that `take` accepts, all
/// starting at most `max_gap_ms` before it and not before `floor`; `i` when there are none.
fn words_before(toks: &[Token], i: usize, floor: usize, max_gap_ms: u64, take: impl Fn(&TokKind) -> bool) -> usize {
    let mut k = i;
    while k > floor
        && i - k < BRIDGE_WORDS
        && take(&toks[k - 1].kind)
        && toks[i].start_ms.saturating_sub(toks[k - 1].start_ms) <= max_gap_ms
    {
        k -= 1;
    }
    k
}

/// Unknown words bridging two digits, at most.
const BRIDGE_WORDS: usize = 3;
/// A fail-safe run that counts unknown words or a dropped digit needs this many real digits.
const MIN_REAL_DIGITS: usize = 6;
/// Digits read one by one that give a run a rhythm to judge a dropped digit by.
const RHYTHM_MIN_DIGITS: usize = 5;
/// Digits a run needs to be redacted in an account context (sort codes have 6, account numbers
/// 8 or more), so that ASR's homophones ("won", "to") after "account" make no account number.
const IBAN_CONTEXT_MIN_DIGITS: usize = 6;

/// Digits in an unredacted run that make it a possible fragment of a longer number.
const SUSPECT_DIGITS: usize = 3;
/// At most this many words may separate a fragment from the redacted run that claims it.
const FRAGMENT_WORDS: usize = 4;
/// A fragment can be claimed this many `context_hold_ms` after its end.
const FRAGMENT_HOLD_FACTOR: u64 = 2;

enum Bridge {
    /// The words bridge to the digit token at this index.
    To(usize),
    /// They reach the end of what was heard so far: undecided.
    Open,
    No,
}

struct Run {
    /// Index of the run's last real token (trailing fillers excluded).
    last: usize,
    /// The run met a token that cannot continue it, so it is closed whatever comes later.
    stopped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::Pii;

    /// Words 300 ms apart starting at `t0`; `|` makes a 3 s pause.
    fn words(t0: u64, text: &str) -> Vec<Word> {
        let mut t = t0;
        let mut out = Vec::new();
        for w in text.split_whitespace() {
            if w == "|" {
                t += 3_000;
                continue;
            }
            out.push(Word { text: Pii::new(w.to_string()), start_ms: t, end_ms: t + 250 });
            t += 300;
        }
        out
    }

    fn run(lang: Lang, text: &str) -> Vec<(SpanKind, String)> {
        let cfg = DetectConfig { lang, ..DetectConfig::default() };
        let mut d = StreamDetector::new(cfg);
        let ws = words(0, text);
        let end = ws.last().map(|w| w.end_ms).unwrap_or(0);
        let mut s = d.push(ws, end);
        let f = d.finish();
        s.words.extend(f.words);
        s.detections.extend(f.detections);
        // Group marked words back into (kind, text) for readable assertions.
        let mut out: Vec<(SpanKind, String)> = Vec::new();
        let mut prev: Option<SpanKind> = None;
        for w in s.words {
            match (w.mark, prev) {
                (Some(k), Some(p)) if k == p => {
                    let last = out.last_mut().unwrap();
                    last.1.push(' ');
                    last.1.push_str(w.word.text.expose());
                }
                (Some(k), _) => out.push((k, w.word.text.expose().clone())),
                _ => {}
            }
            prev = w.mark;
        }
        assert_eq!(out.len(), s.detections.len(), "one detection per marked group");
        out
    }

    #[test]
    fn card_number_with_luhn() {
        let r = run(Lang::En, "it is 4111 1111 1111 1111 thanks");
        assert_eq!(r, vec![(SpanKind::Pan, "4111 1111 1111 1111".into())]);
    }

    #[test]
    fn spoken_card_number_without_context() {
        let r = run(Lang::En, "ok four one one one one one one one one one one one one one one one thanks");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, SpanKind::Pan);
    }

    #[test]
    fn invalid_luhn_falls_back_to_digit_run() {
        let r = run(Lang::En, "ok 4111 1111 1111 1112 bye");
        assert_eq!(r, vec![(SpanKind::Digits, "4111 1111 1111 1112".into())]);
        // Short numbers without context are kept.
        assert!(run(Lang::En, "I have 2 kids and 3 dogs").is_empty());
        assert!(run(Lang::En, "call me at 5 or 6 tomorrow at 10").is_empty());
    }

    #[test]
    fn context_catches_misheard_digits() {
        // Whisper on 8 kHz: "free" for three, "for" for four, a dropped digit (Luhn fails).
        let r = run(Lang::En, "my card number is for one one free one one one one one one one one one one one");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, SpanKind::Pan);
        assert!(r[0].1.starts_with("for"), "{:?}", r[0].1);
    }

    #[test]
    fn security_code_and_expiry() {
        let r = run(Lang::En, "the security code is one two three and the expiry date is oh five twenty seven");
        assert_eq!(r, vec![(SpanKind::Cvv, "one two three".into()), (SpanKind::Expiry, "oh five twenty seven".into())]);
        let r = run(Lang::Es, "el código de seguridad es cuatro cinco seis");
        assert_eq!(r, vec![(SpanKind::Cvv, "cuatro cinco seis".into())]);
        let r = run(Lang::Pt, "a validade é doze vinte e oito");
        assert_eq!(r, vec![(SpanKind::Expiry, "doze vinte e oito".into())]);
    }

    #[test]
    fn context_expires() {
        // A card mention, then a long pause, then a short number: kept.
        let r = run(Lang::En, "my card | | | | the meeting is at 3");
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn national_ids() {
        let r = run(Lang::Es, "mi dni es 12345678 Z gracias");
        assert_eq!(r, vec![(SpanKind::NationalId, "12345678 Z".into())]);
        let r = run(Lang::Es, "ok X 1234567 L vale");
        assert_eq!(r, vec![(SpanKind::NationalId, "X 1234567 L".into())]);
        let r = run(Lang::Pt, "é 123456789 obrigado");
        assert_eq!(r, vec![(SpanKind::NationalId, "123456789".into())]);
        let r = run(Lang::En, "it is A B 12 34 56 C ok");
        assert_eq!(r, vec![(SpanKind::NationalId, "A B 12 34 56 C".into())]);
        let r = run(Lang::En, "number 123-45-6789 ok");
        assert_eq!(r, vec![(SpanKind::Ssn, "123-45-6789".into())]);
        let r = run(Lang::Es, "es ES91 2100 0418 4502 0005 1332 vale");
        assert_eq!(r, vec![(SpanKind::Iban, "ES91 2100 0418 4502 0005 1332".into())]);
    }

    #[test]
    fn runs_span_window_boundaries() {
        let mut d = StreamDetector::new(DetectConfig::default());
        let w1 = words(0, "card number is 4111 1111");
        let end1 = w1.last().unwrap().end_ms + 100;
        let s1 = d.push(w1, end1);
        // The run is open: its words are held, and the horizon sits on the end of the keyword
        // ("card number" ends at 550 ms), where the span will start.
        assert_eq!(s1.words.len(), 3);
        assert!(s1.detections.is_empty());
        assert_eq!(d.horizon_ms(), Some(550));
        let w2 = words(end1 + 200, "1111 1111 thank you");
        let end2 = w2.last().unwrap().end_ms + 2_000;
        let s2 = d.push(w2, end2);
        assert_eq!(s2.detections.len(), 1);
        assert_eq!(s2.detections[0].kind, SpanKind::Pan);
        // The span reaches back to the end of the keyword ("card number" ends at 550 ms).
        assert_eq!(s2.detections[0].start_ms, 550);
        assert_eq!(s2.words.iter().filter(|w| w.mark.is_some()).count(), 4);
        assert_eq!(d.horizon_ms(), None);
    }

    #[test]
    fn a_keyword_at_the_end_of_a_window_holds_the_audio_after_it() {
        let mut d = StreamDetector::new(DetectConfig::default());
        // The window ends right after the keyword; its number comes in the next window.
        let s1 = d.push(words(0, "my card number is"), 1_500);
        assert!(s1.detections.is_empty());
        assert_eq!(s1.words.len(), 4);
        // "card number" ends at 850 ms: a run in the next window is stretched back there, so the
        // pipeline must not release audio past it.
        assert_eq!(d.horizon_ms(), Some(850));
        let s2 = d.push(words(1_600, "4111 1111 1111 1111 thanks"), 4_000);
        assert_eq!(s2.detections, vec![Detection { start_ms: 850, end_ms: 2_750, kind: SpanKind::Pan }]);
        // Once its context has expired, a keyword holds nothing back.
        let mut d = StreamDetector::new(DetectConfig::default());
        d.push(words(0, "my card number is"), 1_500);
        d.push(words(2_000, "okay thanks"), 20_000);
        assert_eq!(d.horizon_ms(), None);
        // A broken stream releases what the keyword held.
        let mut d = StreamDetector::new(DetectConfig::default());
        d.push(words(0, "my card number is"), 1_500);
        d.break_stream(3_000);
        assert_eq!(d.horizon_ms(), None);
    }

    #[test]
    fn after_card_data_short_numbers_are_redacted_for_a_while() {
        let kinds = |text: &str, cfg: DetectConfig| {
            let mut d = StreamDetector::new(cfg);
            let mut s = d.push(words(0, text), 0);
            let f = d.finish();
            s.detections.extend(f.detections);
            s.detections.iter().map(|x| x.kind).collect::<Vec<_>>()
        };
        // The expiry keyword was misheard; the payment context still catches the date, and a
        // short code after it, but not a number long after.
        let text = "card number 4111 1111 1111 1111 | and the estimated oh 9 27 | code is like 7 3 7 ok";
        assert_eq!(kinds(text, DetectConfig::default()), vec![SpanKind::Pan, SpanKind::Expiry, SpanKind::Cvv]);
        let text = "card number 4111 1111 1111 1111 | | | | | | and we moved in 2019 ok";
        assert_eq!(kinds(text, DetectConfig::default()), vec![SpanKind::Pan]);
        // Single digits stay, and without card data nothing short is redacted.
        assert_eq!(
            kinds("card number 4111 1111 1111 1111 | I have 2 kids", DetectConfig::default()),
            vec![SpanKind::Pan]
        );
        assert!(kinds("and the estimated oh 9 27 ok", DetectConfig::default()).is_empty());
        // Off when configured so.
        let off = DetectConfig { payment_context_ms: 0, ..DetectConfig::default() };
        assert_eq!(kinds("card number 4111 1111 1111 1111 | and the estimated oh 9 27", off), vec![SpanKind::Pan]);
    }

    #[test]
    fn a_fragment_before_a_redacted_run_is_redacted_with_it() {
        // The keyword was misheard, so nothing gives context: "4012 888" alone is too short, but
        // the 9-digit run right after it is redacted and claims it (and the filler between).
        let mut d = StreamDetector::new(DetectConfig::default());
        let s1 = d.push(words(0, "the current number 4012 888 hang on"), 2_400);
        // The fragment is held (not settled) while a run may still follow within the hold.
        assert!(s1.detections.is_empty());
        assert_eq!(s1.words.len(), 3);
        assert_eq!(d.horizon_ms(), Some(900));
        let s2 = d.push(words(2_400, "8888 1881 12 ok"), 6_000);
        let s = d.finish();
        let dets: Vec<Detection> = s2.detections.into_iter().chain(s.detections).collect();
        assert_eq!(dets, vec![Detection { start_ms: 900, end_ms: 3_250, kind: SpanKind::Digits }]);
        // Without a redacted run after it, a fragment stays, once the pause is long enough.
        let mut d = StreamDetector::new(DetectConfig::default());
        let s1 = d.push(words(0, "we moved in 2019 and the rent is 950"), 6_000);
        assert!(s1.detections.is_empty());
        assert_eq!(s1.words.len(), 8, "950 is held: words may still follow");
        let s2 = d.push(Vec::new(), 9_000);
        assert!(s2.detections.is_empty());
        assert_eq!(s2.words.len(), 1);
        assert_eq!(d.horizon_ms(), None);
        // And a fragment long before a redacted run is not claimed.
        let mut d = StreamDetector::new(DetectConfig::default());
        d.push(words(0, "room 4012 | | and 4111 1111 1111 1111"), 20_000);
        let s = d.finish();
        assert!(s.detections.iter().all(|x| x.start_ms > 1_000), "{:?}", s.detections);
    }

    #[test]
    fn broken_stream_redacts_open_runs() {
        let mut d = StreamDetector::new(DetectConfig::default());
        let w = words(0, "it is 41 11");
        let s = d.push(w, 1_300);
        assert!(s.detections.is_empty());
        let b = d.break_stream(5_000);
        assert_eq!(b.detections.len(), 1);
        assert_eq!(b.detections[0].kind, SpanKind::Digits);
    }

    #[test]
    fn disabled_detectors_do_not_fire() {
        let cfg = DetectConfig {
            detectors: Detectors::from_names(&["digits"]).unwrap(),
            min_digits: 20,
            ..DetectConfig::default()
        };
        let mut d = StreamDetector::new(cfg);
        d.push(words(0, "4111 1111 1111 1111"), 0);
        assert!(d.finish().detections.is_empty());
        assert!(Detectors::from_names(&["pan", "bogus"]).is_err());
    }

    /// Words at given onsets (ms); each ends where the next starts, as whisper times them.
    fn timed(ws: &[(&str, u64)], end: u64) -> Vec<Word> {
        ws.iter()
            .enumerate()
            .map(|(i, (w, t))| Word {
                text: Pii::new(w.to_string()),
                start_ms: *t,
                end_ms: ws.get(i + 1).map_or(end, |n| n.1),
            })
            .collect()
    }

    fn detect_all(lang: Lang, words: Vec<Word>) -> Vec<Detection> {
        let mut d = StreamDetector::new(DetectConfig { lang, ..DetectConfig::default() });
        let end = words.last().map_or(0, |w| w.end_ms);
        let mut dets = d.push(words, end).detections;
        dets.extend(d.finish().detections);
        dets
    }

    #[test]
    fn homophones_between_digits_count_without_a_context() {
        // "three" heard as "free": the run goes on through it, and the nine digits are caught.
        let r = run(Lang::En, "sure here it is 5 free 6 2 2 7 1 9 4 anything else");
        assert_eq!(r, vec![(SpanKind::Digits, "5 free 6 2 2 7 1 9 4".into())]);
        // Between numbers said as numbers, a homophone is a word.
        assert!(run(Lang::En, "it is 2 for 5 dollars or 3 for 7").is_empty());
    }

    #[test]
    fn a_dropped_digit_shows_in_the_rhythm() {
        // "5 3 6 2 2 7 1 9 4" heard as "5 free 6 2 7 1 9 4": one "2" lost. The onsets keep the
        // hole (760 ms where the run steps 380 ms), which counts as the missing ninth digit.
        let heard = |hole: u64| {
            let mut t = 1_000;
            let mut ws = Vec::new();
            for (k, w) in ["5", "free", "6", "2", "7", "1", "9", "4"].into_iter().enumerate() {
                ws.push((w, t));
                t += if k == 3 { hole } else { 380 };
            }
            ws.push(("thanks", t + 400));
            detect_all(Lang::En, timed(&ws, t + 900))
        };
        let d = heard(760);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].kind, d[0].start_ms), (SpanKind::Digits, 1_000));
        // The same eight words said evenly are eight digits: below the fail-safe.
        assert!(heard(380).is_empty());
    }

    #[test]
    fn words_between_digits_read_one_by_one_may_be_digits() {
        // "uno dos tres" heard as "uno no se es": the run bridges them.
        let r = run(Lang::En, "it is 1 no see is 4 5 6 7 8 7 thanks");
        assert_eq!(r, vec![(SpanKind::Digits, "1 no see is 4 5 6 7 8 7".into())]);
        // In Spanish the same run has the shape of a DNI whose letter was lost.
        let r = run(Lang::Es, "mi número uno no se es 4 5 6 7 8 7 gracias");
        assert_eq!(r, vec![(SpanKind::NationalId, "uno no se es 4 5 6 7 8 7".into())]);
        // Spanish "o" (a letter) between digits: "siete cero nueve" heard as "7 o 9".
        let r = run(Lang::Es, "7 o 9 o 5 o 9 o 4 7 vale");
        assert_eq!(r, vec![(SpanKind::NationalId, "7 o 9 o 5 o 9 o 4 7".into())]);
        // Numbers in ordinary speech stay: words between them, or numbers that are not digits.
        assert!(run(Lang::En, "press 1 for billing press 2 for support press 3 for sales or 4 for me").is_empty());
        assert!(run(Lang::En, "I have 2 kids and 3 dogs and 1 cat and 4 fish and 5 birds").is_empty());
        assert!(run(Lang::En, "I ordered 24 bottles and 12 glasses and 16 plates and 48 cups").is_empty());
        assert!(run(Lang::En, "we won 3 to 1 then lost 2 to 4 and drew 1 to 1 today").is_empty());
        // A year and the words after it (base's "dois mil e minkly cinco, há sério meia").
        assert!(run(Lang::Pt, "14 de março de dois mil e minkly cinco há sério meia estou").is_empty());
        // Too few real digits: the unknown words alone do not make a number.
        assert!(run(Lang::En, "1 went and 2 went and 3 went and").is_empty());
    }

    #[test]
    fn spanish_ids_without_their_letter() {
        let r = run(Lang::Es, "apunte 4 8 2 1 3 6 5 9 gracias");
        assert_eq!(r, vec![(SpanKind::NationalId, "4 8 2 1 3 6 5 9".into())]);
        // "dos" heard as "no": X, six digits and a word standing for one.
        let r = run(Lang::Es, "apunte equis uno no tres cuatro cinco seis siete vale");
        assert_eq!(r, vec![(SpanKind::NationalId, "equis uno no tres cuatro cinco seis siete".into())]);
        // Shorter numbers, and the same digits in English, are not IDs.
        assert!(run(Lang::Es, "apunte 4 8 2 1 3 6 5 gracias").is_empty());
        assert!(run(Lang::En, "write down 4 8 2 1 3 6 5 9 thanks").is_empty());
    }

    #[test]
    fn an_account_context_takes_account_length_numbers_only() {
        assert!(run(Lang::En, "my account was charged 50 dollars twice").is_empty());
        assert!(run(Lang::En, "to my account. we won free to one and lost to the four").is_empty());
        let r = run(Lang::En, "my account is 3 1 9 2 6 8 thanks");
        assert_eq!(r, vec![(SpanKind::Iban, "3 1 9 2 6 8".into())]);
        assert!(run(Lang::Es, "la cuenta son 45 euros").is_empty());
    }

    #[test]
    fn a_run_stretches_back_over_a_hole_in_the_transcript() {
        // Whisper heard nothing between "é" (said at 4.24 s) and the first digit it timed at
        // 7.2 s, though the caller spoke: the span starts where "é" plausibly ended.
        let mut ws = vec![("o", 2_040), ("número", 2_520), ("é", 4_240)];
        let digits: Vec<(String, u64)> =
            (0..16).map(|k| (["4", "2"][k % 2].to_string(), 7_200 + 300 * k as u64)).collect();
        ws.extend(digits.iter().map(|(d, t)| (d.as_str(), *t)));
        let d = detect_all(Lang::Pt, timed(&ws, 12_200));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, SpanKind::Pan);
        assert_eq!(d[0].start_ms, 4_240 + WORD_BASE_MS + WORD_PER_LETTER_MS);
        // At most 2 × max_gap_ms back.
        let mut ws = vec![("é", 1_000)];
        ws.extend(digits.iter().map(|(d, t)| (d.as_str(), *t)));
        assert_eq!(detect_all(Lang::Pt, timed(&ws, 12_200))[0].start_ms, 7_200 - 3_000);
        // Words that follow each other closely leave no hole.
        let ws = [("it", 1_000), ("is", 1_200)].into_iter().chain(digits.iter().map(|(d, t)| (d.as_str(), *t - 5_800)));
        let ws: Vec<(&str, u64)> = ws.collect();
        assert_eq!(detect_all(Lang::Pt, timed(&ws, 7_000))[0].start_ms, 1_400);
    }

    #[test]
    fn a_bridge_at_the_end_of_a_window_waits_for_the_next() {
        let mut d = StreamDetector::new(DetectConfig::default());
        let s1 = d.push(words(0, "sure it is 5 free"), 1_500);
        assert!(s1.detections.is_empty());
        assert_eq!(s1.words.len(), 3, "the run and its homophone are held");
        let s2 = d.push(words(1_500, "6 2 2 7 1 9 4 thanks"), 6_000);
        let f = d.finish();
        let dets: Vec<_> = s2.detections.into_iter().chain(f.detections).collect();
        assert_eq!(dets.len(), 1, "{dets:?}");
        assert_eq!((dets[0].kind, dets[0].start_ms), (SpanKind::Digits, 900));
    }

    #[test]
    fn homophones_before_the_first_digit_start_the_number() {
        // "five three six" heard as "time free fix": 6 real digits and 3 homophones.
        let r = run(Lang::En, "here it is time free fix 2 2 7 1 9 4 anything else");
        assert_eq!(r, vec![(SpanKind::Digits, "time free fix 2 2 7 1 9 4".into())]);
        // A homophone before a short number is a word, and stays.
        assert!(run(Lang::En, "I need it for 2 weeks").is_empty());
        // At the end of a window, homophones are held: the number may follow in the next one.
        let mut d = StreamDetector::new(DetectConfig::default());
        let s1 = d.push(words(0, "here it is time free fix"), 1_800);
        assert_eq!(s1.words.len(), 3);
        let s2 = d.push(words(1_800, "2 2 7 1 9 4 thanks"), 6_000);
        let dets: Vec<_> = s2.detections.into_iter().chain(d.finish().detections).collect();
        assert_eq!(dets.len(), 1, "{dets:?}");
        assert_eq!(dets[0].start_ms, 900);
    }

    #[test]
    fn in_a_payment_context_the_words_before_a_short_number_are_masked_with_it() {
        // "oh nine twenty seven" heard as "boat I in 20th" after the card's security code.
        let ws = [
            ("the", 3_640),
            ("security", 4_120),
            ("code", 4_560),
            ("is", 5_620),
            ("737.", 6_000),
            ("and", 8_060),
            ("the", 8_320),
            ("estimated", 9_040),
            ("boat", 10_380),
            ("I", 10_740),
            ("in", 11_180),
            ("20th", 11_620),
            ("and", 12_100),
            ("everything", 13_760),
        ];
        let d = detect_all(Lang::En, timed(&ws, 14_500));
        assert_eq!(d.iter().map(|d| d.kind).collect::<Vec<_>>(), vec![SpanKind::Cvv, SpanKind::Digits]);
        assert_eq!(d[1].start_ms, 10_380, "{d:?}");
        // Outside a payment context the words before a number are not touched.
        let d = detect_all(Lang::En, timed(&ws[5..], 14_500));
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn after_card_data_homophones_are_digits() {
        // "nine one four" heard as "dying one for", 3 s after the card number ended: its keyword
        // context has closed, the payment context has not.
        let ws = [("card", 0), ("number", 300), ("4111", 600), ("1111", 900), ("1111", 1_200), ("1111", 1_500)];
        let mut all: Vec<(&str, u64)> = ws.to_vec();
        all.extend([("the", 2_000), ("seemingly", 2_400), ("is", 3_500), ("dying", 3_900), ("one", 5_100)]);
        all.extend([("for", 5_500), ("and", 6_200), ("the", 6_400), ("fiery", 6_800), ("days", 7_300)]);
        let d = detect_all(Lang::En, timed(&all, 8_000));
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!((d[1].kind, d[1].start_ms, d[1].end_ms), (SpanKind::Digits, 3_900, 6_200));
        // Without card data before it, "one for" is two words.
        let d = detect_all(Lang::En, timed(&all[6..], 8_000));
        assert!(d.is_empty(), "{d:?}");
    }
}
