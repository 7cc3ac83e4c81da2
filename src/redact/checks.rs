//! Check-digit and shape validators for the identifiers the detectors look for: payment card
//! numbers (Luhn + issuer ranges), IBAN (ISO 13616 mod-97), Spanish DNI/NIE (mod-23 letter),
//! Portuguese NIF (mod-11), US SSN (issuance rules) and UK NINO (prefix rules).
//!
//! Pure functions over ASCII strings; they do not search text or know about time (that is
//! `detect`), and they never panic on any input.

/// Luhn (ISO/IEC 7812) over ASCII digits; false for anything that is not all digits.
pub fn luhn(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = (b - b'0') as u32;
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Issuer identification ranges of the major schemes, with their lengths.
pub fn known_iin(pan: &str) -> bool {
    let len = pan.len();
    let p = |n: usize| pan.get(..n).and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    // Visa
    (pan.starts_with('4') && matches!(len, 13 | 16 | 19))
        // Mastercard 51-55, 2221-2720
        || ((51..=55).contains(&p(2)) || (2221..=2720).contains(&p(4))) && len == 16
        // American Express
        || matches!(p(2), 34 | 37) && len == 15
        // Discover 6011, 644-649, 65, 622126-622925
        || (p(4) == 6011 || (644..=649).contains(&p(3)) || p(2) == 65 || (622_126..=622_925).contains(&p(6)))
            && (16..=19).contains(&len)
        // JCB 3528-3589
        || (3528..=3589).contains(&p(4)) && (16..=19).contains(&len)
        // Diners 300-305, 36, 38-39
        || ((300..=305).contains(&p(3)) || matches!(p(2), 36 | 38 | 39)) && (14..=19).contains(&len)
        // Maestro 50, 56-69 (broad), UnionPay 62
        || (p(2) == 50 || (56..=69).contains(&p(2))) && (12..=19).contains(&len)
}

/// A plausible card number: 13-19 digits, Luhn-valid, in a known issuer range.
pub fn is_pan(digits: &str) -> bool {
    (13..=19).contains(&digits.len()) && luhn(digits) && known_iin(digits)
}

/// Finds a card number inside a longer digit string (ASR may glue neighbours on).
pub fn find_pan(digits: &str) -> bool {
    let n = digits.len();
    (0..n).any(|s| (13..=19).filter(|l| s + l <= n).any(|l| is_pan(&digits[s..s + l])))
}

/// ISO 13616 IBAN: 2 letters, 2 check digits, 11-30 alphanumerics, mod 97 == 1.
pub fn is_iban(s: &str) -> bool {
    let b = s.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return false;
    }
    let mut rem = 0u32;
    for &c in b[4..].iter().chain(&b[..4]) {
        if c.is_ascii_digit() {
            rem = (rem * 10 + (c - b'0') as u32) % 97;
        } else {
            rem = (rem * 100 + (c - b'A' + 10) as u32) % 97;
        }
    }
    rem == 1
}

const DNI_LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";

/// Spanish DNI (8 digits + letter) or NIE (X/Y/Z + 7 digits + letter), letter checked.
pub fn is_dni_or_nie(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 9 || !b[8].is_ascii_uppercase() || !b[1..8].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let lead = match b[0] {
        b'0'..=b'9' => (b[0] - b'0') as u32,
        b'X' => 0,
        b'Y' => 1,
        b'Z' => 2,
        _ => return false,
    };
    let num = b[1..8].iter().fold(lead, |acc, d| acc * 10 + (d - b'0') as u32);
    DNI_LETTERS[(num % 23) as usize] == b[8]
}

/// Portuguese NIF: 9 digits, valid first digit, mod-11 check digit.
pub fn is_pt_nif(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 9
        || !b.iter().all(u8::is_ascii_digit)
        || !matches!(b[0], b'1' | b'2' | b'3' | b'5' | b'6' | b'8' | b'9')
    {
        return false;
    }
    let sum: u32 = b[..8].iter().enumerate().map(|(i, d)| (d - b'0') as u32 * (9 - i as u32)).sum();
    let check = match 11 - sum % 11 {
        10 | 11 => 0,
        c => c,
    };
    (b[8] - b'0') as u32 == check
}

/// US SSN issuance rules: 9 digits, area not 000/666/9xx, group not 00, serial not 0000.
pub fn is_ssn(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let area = &s[..3];
    area != "000" && area != "666" && !area.starts_with('9') && &s[3..5] != "00" && &s[5..] != "0000"
}

/// UK National Insurance number: 2 letters, 6 digits, suffix A-D, with the excluded prefixes.
pub fn is_nino(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 9 || !b[..2].iter().all(u8::is_ascii_uppercase) || !b[2..8].iter().all(u8::is_ascii_digit) {
        return false;
    }
    if !matches!(b[8], b'A'..=b'D') {
        return false;
    }
    if b"DFIQUV".contains(&b[0]) || b"DFIOQUV".contains(&b[1]) {
        return false;
    }
    !matches!(&s[..2], "BG" | "GB" | "NK" | "KN" | "TN" | "NT" | "ZZ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pans() {
        assert!(is_pan("4111111111111111"));
        assert!(is_pan("5555555555554444"));
        assert!(is_pan("378282246310005"));
        assert!(is_pan("6011111111111117"));
        assert!(is_pan("2223003122003222"));
        assert!(!is_pan("4111111111111112"), "bad check digit");
        assert!(!is_pan("1234567812345670"), "Luhn-valid but no issuer");
        assert!(!is_pan("41111111"));
        assert!(!luhn("41a1"));
        assert!(find_pan("9941111111111111111"), "a PAN inside a longer run");
        assert!(find_pan("74111111111111111"));
    }

    #[test]
    fn ibans() {
        assert!(is_iban("ES9121000418450200051332"));
        assert!(is_iban("GB29NWBK60161331926819"));
        assert!(is_iban("PT50000201231234567890154"));
        assert!(!is_iban("ES9121000418450200051333"));
        assert!(!is_iban("es9121000418450200051332"));
        assert!(!is_iban("ES91"));
    }

    #[test]
    fn spanish_ids() {
        assert!(is_dni_or_nie("12345678Z"));
        assert!(!is_dni_or_nie("12345678A"));
        assert!(is_dni_or_nie("X1234567L"));
        assert!(is_dni_or_nie("Y1234567X"));
        assert!(!is_dni_or_nie("X1234567A"));
        assert!(!is_dni_or_nie("W1234567L"));
        assert!(!is_dni_or_nie("1234"));
    }

    #[test]
    fn portuguese_nif() {
        assert!(is_pt_nif("123456789"));
        assert!(is_pt_nif("501442600"));
        assert!(!is_pt_nif("123456780"));
        assert!(!is_pt_nif("423456789"), "4 is not a valid first digit");
    }

    #[test]
    fn ssn_and_nino() {
        assert!(is_ssn("123456789"));
        assert!(!is_ssn("000123456"));
        assert!(!is_ssn("666123456"));
        assert!(!is_ssn("912345678"));
        assert!(!is_ssn("123006789"));
        assert!(!is_ssn("123450000"));
        assert!(is_nino("AB123456C"));
        assert!(!is_nino("AB123456E"));
        assert!(!is_nino("DA123456A"));
        assert!(!is_nino("GB123456A"));
    }
}
