//! Spoken-number normaliser: turns ASR words into digit groups, letters, context keywords and
//! "digit-like" words, keeping each token's media time and the words it came from.
//!
//! It handles English, Spanish and Portuguese number words ("forty one", "treinta y dos",
//! "vinte e sete", "two thousand twenty seven"), repetition words ("double four", "doble",
//! "triplo"), "oh" for zero, digits written with spaces, hyphens, dots or commas, and the
//! homophones Whisper produces for digits on telephone audio ("for", "free", "ate": FACTS.md §2),
//! which it reports as *loose* digits that only count inside a card/ID/security-code context.
//! It does not decide what is personal data (that is `detect`) and never logs a word.

use std::fmt;

use crate::transcribe::Word;

/// Language of the number and keyword vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    En,
    Es,
    Pt,
}

impl Lang {
    /// Whisper's language code.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Es => "es",
            Lang::Pt => "pt",
        }
    }
}

/// What a context keyword announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    Card,
    Security,
    Expiry,
    NationalId,
    Ssn,
    Iban,
}

/// One normalised token. `first_word..=last_word` index the input words it covers.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokKind,
    pub start_ms: u64,
    pub end_ms: u64,
    pub first_word: usize,
    pub last_word: usize,
}

#[derive(Clone, PartialEq, Eq)]
pub enum TokKind {
    /// Digits said or written (a group such as "4111", or one digit).
    Digits(String),
    /// A single spelled letter (DNI/NIE/NINO/IBAN letters), upper case.
    Letter(char),
    /// A word that is often a misheard digit; counts as one digit inside a context only.
    Loose,
    /// A context keyword ("card number", "código de seguridad").
    Keyword(Context),
    /// Anything else.
    Other,
}

// Tokens carry the digits people said: never print them.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match &self.kind {
            TokKind::Digits(d) => format!("Digits(len {})", d.len()),
            TokKind::Letter(_) => "Letter".into(),
            TokKind::Loose => "Loose".into(),
            TokKind::Keyword(c) => format!("Keyword({c:?})"),
            TokKind::Other => "Other".into(),
        };
        write!(f, "Token({k}, {}..{} ms, words {}..={})", self.start_ms, self.end_ms, self.first_word, self.last_word)
    }
}

/// Lower-case, strip accents, keep letters, digits, apostrophes and separators inside numbers.
pub fn fold(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'á' | 'à' | 'â' | 'ã' | 'ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'õ' | 'ö' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            c => c,
        };
        out.push(c);
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Unit(u32),
    Teen(u32),
    Tens(u32),
    /// Spanish/Portuguese hundreds words ("doscientos", "trezentos") and "cien"/"cem".
    Hundreds(u32),
    Hundred,
    Thousand,
    Repeat(u32),
}

fn number_word(lang: Lang, w: &str) -> Option<Num> {
    use Num::*;
    let n = match lang {
        Lang::En => match w {
            "zero" | "oh" | "o" | "nought" => Unit(0),
            "one" => Unit(1),
            "two" => Unit(2),
            "three" => Unit(3),
            "four" => Unit(4),
            "five" => Unit(5),
            "six" => Unit(6),
            "seven" => Unit(7),
            "eight" => Unit(8),
            "nine" => Unit(9),
            "ten" => Teen(10),
            "eleven" => Teen(11),
            "twelve" => Teen(12),
            "thirteen" => Teen(13),
            "fourteen" => Teen(14),
            "fifteen" => Teen(15),
            "sixteen" => Teen(16),
            "seventeen" => Teen(17),
            "eighteen" => Teen(18),
            "nineteen" => Teen(19),
            "twenty" => Tens(20),
            "thirty" => Tens(30),
            "forty" | "fourty" => Tens(40),
            "fifty" => Tens(50),
            "sixty" => Tens(60),
            "seventy" => Tens(70),
            "eighty" => Tens(80),
            "ninety" => Tens(90),
            "hundred" => Hundred,
            "thousand" => Thousand,
            "double" => Repeat(2),
            "triple" | "treble" => Repeat(3),
            _ => return None,
        },
        Lang::Es => match w {
            "cero" => Unit(0),
            "uno" | "una" | "un" => Unit(1),
            "dos" => Unit(2),
            "tres" => Unit(3),
            "cuatro" => Unit(4),
            "cinco" => Unit(5),
            "seis" => Unit(6),
            "siete" => Unit(7),
            "ocho" => Unit(8),
            "nueve" => Unit(9),
            "diez" => Teen(10),
            "once" => Teen(11),
            "doce" => Teen(12),
            "trece" => Teen(13),
            "catorce" => Teen(14),
            "quince" => Teen(15),
            "dieciseis" => Teen(16),
            "diecisiete" => Teen(17),
            "dieciocho" => Teen(18),
            "diecinueve" => Teen(19),
            "veinte" => Tens(20),
            "veintiuno" | "veintiun" | "veintiuna" => Teen(21),
            "veintidos" => Teen(22),
            "veintitres" => Teen(23),
            "veinticuatro" => Teen(24),
            "veinticinco" => Teen(25),
            "veintiseis" => Teen(26),
            "veintisiete" => Teen(27),
            "veintiocho" => Teen(28),
            "veintinueve" => Teen(29),
            "treinta" => Tens(30),
            "cuarenta" => Tens(40),
            "cincuenta" => Tens(50),
            "sesenta" => Tens(60),
            "setenta" => Tens(70),
            "ochenta" => Tens(80),
            "noventa" => Tens(90),
            "cien" | "ciento" => Hundreds(100),
            "doscientos" | "doscientas" => Hundreds(200),
            "trescientos" | "trescientas" => Hundreds(300),
            "cuatrocientos" | "cuatrocientas" => Hundreds(400),
            "quinientos" | "quinientas" => Hundreds(500),
            "seiscientos" | "seiscientas" => Hundreds(600),
            "setecientos" | "setecientas" => Hundreds(700),
            "ochocientos" | "ochocientas" => Hundreds(800),
            "novecientos" | "novecientas" => Hundreds(900),
            "mil" => Thousand,
            "doble" => Repeat(2),
            "triple" => Repeat(3),
            _ => return None,
        },
        Lang::Pt => match w {
            "zero" => Unit(0),
            "um" | "uma" => Unit(1),
            "dois" | "duas" => Unit(2),
            "tres" => Unit(3),
            "quatro" => Unit(4),
            "cinco" => Unit(5),
            "seis" | "meia" => Unit(6),
            "sete" => Unit(7),
            "oito" => Unit(8),
            "nove" => Unit(9),
            "dez" => Teen(10),
            "onze" => Teen(11),
            "doze" => Teen(12),
            "treze" => Teen(13),
            "catorze" | "quatorze" => Teen(14),
            "quinze" => Teen(15),
            "dezesseis" | "dezasseis" => Teen(16),
            "dezessete" | "dezassete" => Teen(17),
            "dezoito" => Teen(18),
            "dezenove" | "dezanove" => Teen(19),
            "vinte" => Tens(20),
            "trinta" => Tens(30),
            "quarenta" => Tens(40),
            "cinquenta" => Tens(50),
            "sessenta" => Tens(60),
            "setenta" => Tens(70),
            "oitenta" => Tens(80),
            "noventa" => Tens(90),
            "cem" | "cento" => Hundreds(100),
            "duzentos" | "duzentas" => Hundreds(200),
            "trezentos" | "trezentas" => Hundreds(300),
            "quatrocentos" | "quatrocentas" => Hundreds(400),
            "quinhentos" | "quinhentas" => Hundreds(500),
            "seiscentos" | "seiscentas" => Hundreds(600),
            "setecentos" | "setecentas" => Hundreds(700),
            "oitocentos" | "oitocentas" => Hundreds(800),
            "novecentos" | "novecentas" => Hundreds(900),
            "mil" => Thousand,
            "duplo" | "dupla" => Repeat(2),
            "triplo" | "tripla" => Repeat(3),
            _ => return None,
        },
    };
    Some(n)
}

/// "and" inside a number ("treinta y dos", "vinte e sete", "one hundred and five").
fn is_joiner(lang: Lang, w: &str) -> bool {
    match lang {
        Lang::En => w == "and",
        Lang::Es => w == "y",
        Lang::Pt => w == "e",
    }
}

/// Words Whisper writes for digits on narrow-band speech (FACTS.md §2); loose, context only.
fn is_loose(lang: Lang, w: &str) -> bool {
    const MONTHS: &[&str] = &[
        "january",
        "february",
        "march",
        "april",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "setiembre",
        "octubre",
        "noviembre",
        "diciembre",
        "janeiro",
        "fevereiro",
        "marco",
        "maio",
        "junho",
        "julho",
        "setembro",
        "outubro",
        "novembro",
        "dezembro",
    ];
    if MONTHS.contains(&w) {
        return true;
    }
    match lang {
        Lang::En => matches!(
            w,
            "to" | "too"
                | "for"
                | "fore"
                | "free"
                | "tree"
                | "won"
                | "ate"
                | "heaven"
                | "time"
                | "times"
                | "fife"
                | "sex"
                | "fix"
                | "sick"
                | "nein"
                | "owe"
                | "high"
                | "row"
                | "tin"
                | "ten's"
                | "fives"
                | "nines"
                | "ones"
                | "sevens"
                | "fours"
        ),
        Lang::Es => matches!(w, "seiz" | "sies" | "nuevo" | "cuatros"),
        Lang::Pt => matches!(w, "tresh" | "noves" | "sei" | "oitos"),
    }
}

/// Spelled letters as ASR writes them out ("equis" for the X of a NIE). Only names that are not
/// everyday words: "de", "te", "se" or "be" would turn prepositions and pronouns into letters.
fn letter_name(lang: Lang, w: &str) -> Option<char> {
    let c = match lang {
        Lang::En => match w {
            "aitch" | "haitch" => 'H',
            "zed" | "zee" => 'Z',
            "ex" => 'X',
            "vee" => 'V',
            "dee" => 'D',
            "cue" | "queue" => 'Q',
            "kay" => 'K',
            "jay" => 'J',
            "ess" => 'S',
            _ => return None,
        },
        Lang::Es => match w {
            "equis" => 'X',
            "jota" => 'J',
            "zeta" => 'Z',
            "hache" => 'H',
            "efe" => 'F',
            "ele" => 'L',
            "eme" => 'M',
            "ene" => 'N',
            "erre" => 'R',
            "uve" => 'V',
            "ka" => 'K',
            _ => return None,
        },
        Lang::Pt => match w {
            "xis" => 'X',
            "jota" => 'J',
            "ze" => 'Z',
            "aga" => 'H',
            "efe" => 'F',
            "ele" => 'L',
            "eme" => 'M',
            "ene" => 'N',
            "erre" => 'R',
            "esse" => 'S',
            "capa" => 'K',
            _ => return None,
        },
    };
    Some(c)
}

/// Keyword phrases, longest first within a language so "cartão de cidadão" beats "cartão".
fn keywords(lang: Lang) -> &'static [(&'static [&'static str], Context)] {
    use Context::*;
    match lang {
        Lang::En => &[
            (&["number", "on", "the", "card"], Card),
            (&["back", "of", "the", "card"], Security),
            (&["national", "insurance", "number"], NationalId),
            (&["n", "i", "number"], NationalId),
            (&["ni", "number"], NationalId),
            (&["social", "security", "number"], Ssn),
            (&["card", "number"], Card),
            (&["credit", "card"], Card),
            (&["debit", "card"], Card),
            (&["long", "number"], Card),
            (&["security", "code"], Security),
            (&["security", "number"], Security),
            (&["verification", "code"], Security),
            (&["three", "digit"], Security),
            (&["three", "digits"], Security),
            (&["expiry", "date"], Expiry),
            (&["expiration", "date"], Expiry),
            (&["valid", "until"], Expiry),
            (&["valid", "thru"], Expiry),
            (&["valid", "through"], Expiry),
            (&["national", "insurance"], NationalId),
            (&["id", "number"], NationalId),
            (&["social", "security"], Ssn),
            // "my social is ...": US callers shorten the name
            (&["social"], Ssn),
            (&["account", "number"], Iban),
            (&["sort", "code"], Iban),
            (&["bank", "account"], Iban),
            (&["card"], Card),
            (&["visa"], Card),
            (&["mastercard"], Card),
            (&["amex"], Card),
            // Alone, "account" opens an account context for account-length numbers only
            // (`detect`): callers say "my account" about much else.
            (&["account"], Iban),
            (&["cvv"], Security),
            (&["cvc"], Security),
            (&["cv2"], Security),
            (&["security"], Security),
            (&["expiry"], Expiry),
            (&["expiration"], Expiry),
            (&["expires"], Expiry),
            (&["expire"], Expiry),
            (&["dni"], NationalId),
            (&["nie"], NationalId),
            (&["nif"], NationalId),
            (&["passport"], NationalId),
            (&["ssn"], Ssn),
            (&["iban"], Iban),
        ],
        Lang::Es => &[
            (&["numero", "de", "la", "tarjeta"], Card),
            (&["numero", "de", "tarjeta"], Card),
            (&["codigo", "de", "seguridad"], Security),
            (&["fecha", "de", "caducidad"], Expiry),
            (&["fecha", "de", "vencimiento"], Expiry),
            (&["numero", "de", "cuenta"], Iban),
            (&["tres", "digitos"], Security),
            (&["valida", "hasta"], Expiry),
            (&["tarjeta"], Card),
            (&["visa"], Card),
            (&["mastercard"], Card),
            (&["cvv"], Security),
            (&["cvc"], Security),
            (&["reverso"], Security),
            (&["caducidad"], Expiry),
            (&["caduca"], Expiry),
            (&["vencimiento"], Expiry),
            (&["vence"], Expiry),
            (&["dni"], NationalId),
            (&["nie"], NationalId),
            (&["nif"], NationalId),
            (&["documento"], NationalId),
            (&["identidad"], NationalId),
            (&["pasaporte"], NationalId),
            (&["iban"], Iban),
            (&["cuenta"], Iban),
        ],
        Lang::Pt => &[
            (&["cartao", "de", "cidadao"], NationalId),
            (&["bilhete", "de", "identidade"], NationalId),
            (&["numero", "do", "cartao"], Card),
            (&["codigo", "de", "seguranca"], Security),
            (&["numero", "de", "contribuinte"], NationalId),
            (&["numero", "de", "conta"], Iban),
            (&["tres", "digitos"], Security),
            (&["valido", "ate"], Expiry),
            (&["data", "de", "validade"], Expiry),
            (&["cartao"], Card),
            (&["visa"], Card),
            (&["mastercard"], Card),
            (&["cvv"], Security),
            (&["cvc"], Security),
            (&["verso"], Security),
            (&["validade"], Expiry),
            (&["expira"], Expiry),
            (&["vencimento"], Expiry),
            (&["nif"], NationalId),
            (&["contribuinte"], NationalId),
            (&["documento"], NationalId),
            (&["identidade"], NationalId),
            (&["passaporte"], NationalId),
            (&["iban"], Iban),
            (&["nib"], Iban),
            (&["conta"], Iban),
        ],
    }
}

/// A word split into the pieces the normaliser looks at: "4111-1111," gives one digit piece,
/// "twenty-one" two word pieces.
fn pieces(word: &str) -> Vec<String> {
    let f = fold(word);
    // Digits with separators inside ("4111-1111", "12.345.678", "4,111") are one digit group.
    let digits: String = f.chars().filter(char::is_ascii_digit).collect();
    if !digits.is_empty() && f.chars().all(|c| c.is_ascii_digit() || "-.,/ :;!?()'\"".contains(c)) {
        return vec![digits];
    }
    let mut out = Vec::new();
    for p in f.split(|c: char| !(c.is_alphanumeric() || c == '\'')) {
        let p = p.trim_matches('\'');
        if p.is_empty() {
            continue;
        }
        // Codes written as one word ("ES91", "12345678Z", "X1234567L"): letters one by one and
        // digit groups, so ID checks see them. Longer letter groups ("mp3s") stay one word.
        let mixed = p.chars().any(|c| c.is_ascii_digit()) && p.chars().any(char::is_alphabetic);
        let short_letters = p.split(|c: char| c.is_ascii_digit()).all(|g| g.chars().count() <= 2);
        if mixed && short_letters {
            let mut digits = String::new();
            for c in p.chars() {
                if c.is_ascii_digit() {
                    digits.push(c);
                } else {
                    if !digits.is_empty() {
                        out.push(std::mem::take(&mut digits));
                    }
                    out.push(c.to_string());
                }
            }
            if !digits.is_empty() {
                out.push(digits);
            }
        } else {
            out.push(p.to_string());
        }
    }
    out
}

struct Piece {
    text: String,
    word: usize,
    start_ms: u64,
    end_ms: u64,
}

/// Normalises `words` (in time order) in `lang`. Word indices in the tokens are positions in
/// `words`.
pub fn normalize(lang: Lang, words: &[Word]) -> Vec<Token> {
    let mut ps = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let parts = pieces(w.text.expose());
        let n = parts.len().max(1) as u64;
        let dur = w.end_ms.saturating_sub(w.start_ms);
        for (k, p) in parts.into_iter().enumerate() {
            // Pieces of one word share its time proportionally; Whisper gives no finer timing.
            let s = w.start_ms + dur * k as u64 / n;
            let e = w.start_ms + dur * (k as u64 + 1) / n;
            ps.push(Piece { text: p, word: i, start_ms: s, end_ms: e.max(s) });
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < ps.len() {
        let p = &ps[i];
        // Keywords (multi-word phrases).
        if let Some((len, ctx)) = keywords(lang).iter().find_map(|(phrase, ctx)| {
            let ok = phrase.len() <= ps.len() - i && phrase.iter().enumerate().all(|(k, w)| ps[i + k].text == *w);
            ok.then_some((phrase.len(), *ctx))
        }) {
            let last = &ps[i + len - 1];
            out.push(Token {
                kind: TokKind::Keyword(ctx),
                start_ms: p.start_ms,
                end_ms: last.end_ms,
                first_word: p.word,
                last_word: last.word,
            });
            i += len;
            continue;
        }
        // ASR misspells keywords on telephone audio ("malidade" for "validade", "comcontribuinte"):
        // long single-word keywords also match one edit away, or inside a longer word.
        if let Some(ctx) = fuzzy_keyword(lang, &p.text) {
            out.push(tok(TokKind::Keyword(ctx), p, p));
            i += 1;
            continue;
        }
        if p.text.chars().all(|c| c.is_ascii_digit()) {
            out.push(tok(TokKind::Digits(p.text.clone()), p, p));
            i += 1;
            continue;
        }
        if let Some(used) = number_phrase(lang, &ps[i..], &mut out) {
            i += used;
            continue;
        }
        let mut chars = p.text.chars();
        let kind = match (chars.next(), chars.next(), letter_name(lang, &p.text)) {
            (Some(c), None, _) if c.is_alphabetic() => TokKind::Letter(c.to_ascii_uppercase()),
            (_, _, Some(c)) => TokKind::Letter(c),
            _ if is_loose(lang, &p.text) => TokKind::Loose,
            _ => TokKind::Other,
        };
        out.push(tok(kind, p, p));
        i += 1;
    }
    mark_loops(&ps, &mut out);
    out
}

fn fuzzy_keyword(lang: Lang, w: &str) -> Option<Context> {
    const MIN_LEN: usize = 7;
    // Stems no everyday word contains, found inside whatever ASR made of the keyword
    // ("nexpiringated" for "and the expiry date").
    let stems: &[(&str, Context)] = match lang {
        Lang::En => &[("expir", Context::Expiry)],
        Lang::Es => &[("caduc", Context::Expiry), ("vencimi", Context::Expiry)],
        Lang::Pt => &[("validad", Context::Expiry), ("venciment", Context::Expiry)],
    };
    if let Some((_, ctx)) = stems.iter().find(|(stem, _)| w.contains(stem)) {
        return Some(*ctx);
    }
    keywords(lang).iter().find_map(|(phrase, ctx)| {
        let [k] = phrase else { return None };
        let close = k.len() >= MIN_LEN && (w.contains(k) || edit_distance_at_most_1(w, k));
        close.then_some(*ctx)
    })
}

fn edit_distance_at_most_1(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let (short, long) = if a.len() <= b.len() { (&a, &b) } else { (&b, &a) };
    if long.len() - short.len() > 1 {
        return false;
    }
    let p = short.iter().zip(long.iter()).take_while(|(x, y)| x == y).count();
    if short.len() == long.len() {
        short[p..].iter().skip(1).eq(long[p..].iter().skip(1))
    } else {
        short[p..] == long[p + 1..]
    }
}

/// Whisper loops on repetitive input, and digit strings are the most repetitive thing callers say
/// ("41, 41, 41", "uau, uau, uau" for Portuguese digits: FACTS.md §2, "E, E, E" for Spanish
/// ones). Four or more identical words or letters in a row stand for digits nobody could read: each becomes an unknown digit, so a long
/// loop trips the digit-run fail-safe.
fn mark_loops(ps: &[Piece], toks: &mut [Token]) {
    const MIN_LOOP: usize = 4;
    // Right after or before digits, three repeats are enough: the loop is the number's rest.
    const MIN_LOOP_NEXT_TO_DIGITS: usize = 3;
    let text = |t: &Token| ps.iter().find(|p| p.word == t.first_word).map(|p| p.text.as_str()).unwrap_or("");
    let is_digits = |t: Option<&Token>| t.is_some_and(|t| matches!(t.kind, TokKind::Digits(_)));
    let mut i = 0;
    while i < toks.len() {
        let mut j = i + 1;
        while j < toks.len() && toks[i].kind == toks[j].kind && text(&toks[i]) == text(&toks[j]) {
            j += 1;
        }
        // A letter may sit between ("5, o poço, poço"): Portuguese "o", English "a".
        let before = match i.checked_sub(1).map(|k| &toks[k]) {
            Some(t) if matches!(t.kind, TokKind::Letter(_)) => i.checked_sub(2).map(|k| &toks[k]),
            t => t,
        };
        let next_to_digits = is_digits(before) || is_digits(toks.get(j));
        let min = if next_to_digits { MIN_LOOP_NEXT_TO_DIGITS } else { MIN_LOOP };
        if j - i >= min && matches!(toks[i].kind, TokKind::Other | TokKind::Loose | TokKind::Letter(_)) {
            for t in &mut toks[i..j] {
                t.kind = TokKind::Digits("0".into());
            }
        }
        i = j;
    }
}

fn tok(kind: TokKind, first: &Piece, last: &Piece) -> Token {
    Token { kind, start_ms: first.start_ms, end_ms: last.end_ms, first_word: first.word, last_word: last.word }
}

/// Parses number words starting at `ps[0]`; pushes digit tokens and returns how many pieces were
/// used, or None when `ps[0]` is not a number word.
///
/// Digit-by-digit reading must stay digit-by-digit ("four one one one" is 4111, not 7), so values
/// only combine where speech combines them: tens + unit, hundreds + rest, thousands + rest.
fn number_phrase(lang: Lang, ps: &[Piece], out: &mut Vec<Token>) -> Option<usize> {
    number_word(lang, &ps[0].text)?;
    // Accumulated value, the piece it started at, and whether it still accepts a smaller part
    // (after "twenty" a unit, after "hundred" tens/units, after "thousand" anything below 1000).
    let mut cur: Option<(u64, usize, u64)> = None; // (value, first piece, largest part it accepts + 1)
    let mut repeat: Option<(u32, usize)> = None;
    let mut i = 0;
    let mut last_num = 0;
    let flush = |cur: &mut Option<(u64, usize, u64)>, end: usize, out: &mut Vec<Token>| {
        if let Some((v, first, _)) = cur.take() {
            out.push(tok(TokKind::Digits(v.to_string()), &ps[first], &ps[end]));
        }
    };
    while i < ps.len() {
        let w = &ps[i].text;
        let Some(n) = number_word(lang, w) else {
            // A joiner continues a number only when a number word follows it.
            if is_joiner(lang, w) && cur.is_some() && i + 1 < ps.len() && number_word(lang, &ps[i + 1].text).is_some() {
                i += 1;
                continue;
            }
            break;
        };
        if let Some((times, start)) = repeat.take() {
            if let Num::Unit(d) = n {
                flush(&mut cur, last_num, out);
                let s: String = std::iter::repeat_n(char::from(b'0' + d as u8), times as usize).collect();
                out.push(tok(TokKind::Digits(s), &ps[start], &ps[i]));
                last_num = i;
                i += 1;
                continue;
            }
        }
        match n {
            Num::Repeat(t) => {
                flush(&mut cur, last_num, out);
                repeat = Some((t, i));
            }
            Num::Unit(u) => match cur {
                Some((v, f, room)) if room > u as u64 && u > 0 => cur = Some((v + u as u64, f, 0)),
                _ => {
                    flush(&mut cur, last_num, out);
                    cur = Some((u as u64, i, 0));
                }
            },
            Num::Teen(t) => match cur {
                Some((v, f, room)) if room > t as u64 => cur = Some((v + t as u64, f, 0)),
                _ => {
                    flush(&mut cur, last_num, out);
                    cur = Some((t as u64, i, 0));
                }
            },
            Num::Tens(t) => match cur {
                Some((v, f, room)) if room > t as u64 => cur = Some((v + t as u64, f, 10)),
                _ => {
                    flush(&mut cur, last_num, out);
                    cur = Some((t as u64, i, 10));
                }
            },
            Num::Hundreds(h) => match cur {
                Some((v, f, room)) if room > h as u64 => cur = Some((v + h as u64, f, 100)),
                _ => {
                    flush(&mut cur, last_num, out);
                    cur = Some((h as u64, i, 100));
                }
            },
            Num::Hundred => match cur {
                Some((v, f, _)) if (1..10).contains(&v) => cur = Some((v * 100, f, 100)),
                _ => {
                    flush(&mut cur, last_num, out);
                    cur = Some((100, i, 100));
                }
            },
            Num::Thousand => match cur {
                Some((v, f, _)) if (1..1000).contains(&v) => cur = Some((v * 1000, f, 1000)),
                _ => {
                    flush(&mut cur, last_num, out);
                    cur = Some((1000, i, 1000));
                }
            },
        }
        last_num = i;
        i += 1;
    }
    flush(&mut cur, last_num, out);
    if let Some((_, start)) = repeat {
        // "double" with no digit after it: an ordinary word.
        out.push(tok(TokKind::Other, &ps[start], &ps[start]));
    }
    Some(last_num.max(repeat.map(|r| r.1).unwrap_or(0)) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::Pii;

    fn words(text: &str) -> Vec<Word> {
        text.split_whitespace()
            .enumerate()
            .map(|(i, w)| Word {
                text: Pii::new(w.to_string()),
                start_ms: i as u64 * 300,
                end_ms: i as u64 * 300 + 250,
            })
            .collect()
    }

    fn digits(lang: Lang, text: &str) -> String {
        normalize(lang, &words(text))
            .into_iter()
            .filter_map(|t| match t.kind {
                TokKind::Digits(d) => Some(d),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn english_numbers() {
        assert_eq!(digits(Lang::En, "four one one one"), "4 1 1 1");
        assert_eq!(digits(Lang::En, "double four triple one oh"), "44 111 0");
        assert_eq!(digits(Lang::En, "forty one eleven"), "41 11");
        assert_eq!(digits(Lang::En, "twenty twenty-seven"), "20 27");
        assert_eq!(digits(Lang::En, "two thousand twenty seven"), "2027");
        assert_eq!(digits(Lang::En, "one hundred and five"), "105");
        assert_eq!(digits(Lang::En, "4111-1111, 1111 1111."), "41111111 1111 1111");
        assert_eq!(digits(Lang::En, "double trouble"), "");
        assert_eq!(digits(Lang::En, "I want one and two"), "1 2");
    }

    #[test]
    fn spanish_numbers() {
        assert_eq!(digits(Lang::Es, "cuatro uno uno uno"), "4 1 1 1");
        assert_eq!(digits(Lang::Es, "treinta y dos doble cero"), "32 00");
        assert_eq!(digits(Lang::Es, "veintisiete cero cinco"), "27 0 5");
        assert_eq!(digits(Lang::Es, "dos mil veintisiete"), "2027");
        assert_eq!(digits(Lang::Es, "Cero, seis."), "0 6");
        assert_eq!(digits(Lang::Es, "ciento veinte"), "120");
    }

    #[test]
    fn portuguese_numbers() {
        assert_eq!(digits(Lang::Pt, "quatro um um um"), "4 1 1 1");
        assert_eq!(digits(Lang::Pt, "vinte e sete triplo nove"), "27 999");
        assert_eq!(digits(Lang::Pt, "três dois meia"), "3 2 6");
        assert_eq!(digits(Lang::Pt, "duzentos e cinco"), "205");
    }

    #[test]
    fn keywords_letters_and_loose() {
        let t = normalize(Lang::En, &words("my card number is for X"));
        let kinds: Vec<_> = t.iter().map(|t| t.kind.clone()).collect();
        assert!(kinds.contains(&TokKind::Keyword(Context::Card)));
        assert!(kinds.contains(&TokKind::Loose));
        assert!(kinds.contains(&TokKind::Letter('X')));
        let t = normalize(Lang::Pt, &words("o cartão de cidadão"));
        assert!(t.iter().any(|t| t.kind == TokKind::Keyword(Context::NationalId)));
        let t = normalize(Lang::Pt, &words("a malidade é comcontribuinte"));
        assert_eq!(t.iter().filter(|t| matches!(t.kind, TokKind::Keyword(_))).count(), 2);
        assert!(
            normalize(Lang::En, &words("card cart")).iter().filter(|t| matches!(t.kind, TokKind::Keyword(_))).count()
                == 1
        );
        let t = normalize(Lang::En, &words("and nexpiringated for 20"));
        assert!(t.iter().any(|t| t.kind == TokKind::Keyword(Context::Expiry)));
        let t = normalize(Lang::Es, &words("el código de seguridad"));
        assert!(t.iter().any(|t| t.kind == TokKind::Keyword(Context::Security)));
    }

    #[test]
    fn asr_loops_become_unknown_digits() {
        assert_eq!(digits(Lang::Pt, "um homem uau, uau, uau, uau, uau. obrigado"), "1 0 0 0 0 0");
        assert_eq!(digits(Lang::En, "very very very good"), "");
        // Next to digits three repeats are a loop, through a letter too.
        assert_eq!(digits(Lang::Pt, "5, 5, o poço, poço, poço. O"), "5 5 0 0 0");
        assert_eq!(digits(Lang::Pt, "muito muito muito obrigado"), "");
        // Single letters loop too ("E, E, E, E" for a Spanish account number).
        assert_eq!(digits(Lang::Es, "mi cuenta es E, E, E, E, E. gracias"), "0 0 0 0 0");
        assert_eq!(digits(Lang::En, "A B C D"), "");
    }

    #[test]
    fn spelled_letter_names() {
        let letters = |lang, text| {
            normalize(lang, &words(text))
                .into_iter()
                .filter_map(|t| if let TokKind::Letter(c) = t.kind { Some(c) } else { None })
                .collect::<String>()
        };
        assert_eq!(letters(Lang::Es, "equis uno dos jota"), "XJ");
        assert_eq!(letters(Lang::Pt, "xis um dois zê"), "XZ");
        assert_eq!(letters(Lang::En, "zed 1 2 aitch"), "ZH");
        // Everyday words stay words.
        assert_eq!(letters(Lang::Es, "de te se"), "");
    }

    #[test]
    fn token_times_and_words() {
        let t = normalize(Lang::En, &words("twenty one"));
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].start_ms, t[0].end_ms, t[0].first_word, t[0].last_word), (0, 550, 0, 1));
        assert!(!format!("{:?}", t[0]).contains("21"));
    }
}
