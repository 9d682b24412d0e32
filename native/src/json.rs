//! A strict JSON parser for event documents (RFC 8259), exact by construction.
//!
//! Numbers are kept as their literal text, so no digit is lost to a double;
//! strings borrow from the input unless they hold escapes. The input must be
//! UTF-8 (an encoded or escaped lone surrogate is refused, as Python's parsers
//! do), control characters must be escaped, one UTF-8 byte order mark may lead.
//!
//! Values nest at most `max_depth` levels (the top-level container is level
//! 1). Deeper ones are still checked for syntax, without recursion and without
//! being built, so a valid but too-deep document is `TooDeep` and an invalid
//! one `NotJson`, however deep. Unknown fields of the top-level object can be
//! skipped the same way (`Parser::object_with`).

use std::borrow::Cow;

/// An integer literal with more digits than this is refused, as CPython's
/// int() refuses it (sys.get_int_max_str_digits()).
pub const MAX_INTEGER_DIGITS: usize = 4300;

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// The literal text, grammar already checked.
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Members in document order; a repeated key keeps every copy and
    /// `get` takes the last, as Python's json and orjson do.
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

impl<'a> Value<'a> {
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Members with repeated keys folded as a dict would: the first position, the last value.
    pub fn members(&self) -> Vec<(&str, &Value<'a>)> {
        let Value::Object(members) = self else {
            return Vec::new();
        };
        let mut out: Vec<(&str, &Value<'a>)> = Vec::with_capacity(members.len());
        for (key, value) in members {
            if let Some(slot) = out.iter_mut().find(|(k, _)| *k == key.as_ref()) {
                slot.1 = value;
            } else {
                out.push((key.as_ref(), value));
            }
        }
        out
    }
}

/// Appends `text` as a JSON string: `"` and `\` escaped, the short escapes
/// for U+0008, U+0009, U+000A, U+000C, U+000D, other code points below
/// U+0020 as `\u00xx`, everything else as it is (no `\/`, UTF-8 kept).
pub fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Value<'_> {
    /// Compact JSON text of the value (members in document order, repeats kept).
    pub fn write(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(n),
            Value::String(s) => write_string(s, out),
            Value::Array(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Value::Object(members) => {
                out.push('{');
                for (n, (key, value)) in members.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    write_string(key, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    NotJson,
    TooDeep,
}

pub struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
    /// A string (key or value, anywhere) holds U+0000.
    pub has_nul: bool,
    /// Something nested deeper than max_depth (the document is still checked).
    pub too_deep: bool,
}

/// How `fields` builds a slot's value.
pub enum Filter<'f> {
    /// All of it.
    Whole,
    /// An object: only the members whose key passes are built, the others
    /// are checked and skipped. Anything but an object is built whole.
    Members(&'f dyn Fn(&str) -> bool),
}

fn ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl<'a> Parser<'a> {
    pub fn new(input: &'a [u8], max_depth: usize) -> Result<Self, Error> {
        let text = std::str::from_utf8(input).map_err(|_| Error::NotJson)?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Ok(Parser {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            max_depth,
            has_nul: false,
            too_deep: false,
        })
    }

    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len() && ws(self.bytes[self.pos]) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), Error> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Error::NotJson)
        }
    }

    /// The end of the document: only whitespace may follow.
    pub fn finish(&mut self) -> Result<(), Error> {
        self.skip_ws();
        if self.pos != self.bytes.len() {
            return Err(Error::NotJson);
        }
        if self.too_deep {
            return Err(Error::TooDeep);
        }
        Ok(())
    }

    /// A whole document as one value.
    pub fn document(mut self) -> Result<(Value<'a>, bool), Error> {
        self.skip_ws();
        let value = self.value(1)?;
        self.finish()?;
        Ok((value, self.has_nul))
    }

    /// The top-level value into `slots`: if it is an object, each member whose
    /// key `slot` names goes to that slot (a repeated key's last value wins)
    /// and the others are checked and skipped, not built; returns true. Any
    /// other value is checked, and false returned.
    pub fn fields<'f, const N: usize>(
        &mut self,
        slot: impl Fn(&str) -> Option<(usize, Filter<'f>)>,
        slots: &mut [Option<Value<'a>>; N],
    ) -> Result<bool, Error> {
        self.skip_ws();
        if self.peek() != Some(b'{') {
            self.skip_value(1)?;
            return Ok(false);
        }
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(true);
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            match slot(&key) {
                Some((n, Filter::Whole)) => slots[n] = Some(self.value(2)?),
                Some((n, Filter::Members(keep))) => slots[n] = Some(self.filtered(keep)?),
                None => self.skip_value(2)?,
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(true);
                }
                _ => return Err(Error::NotJson),
            }
        }
    }

    /// A top-level member's value under `Filter::Members`.
    fn filtered(&mut self, keep: &dyn Fn(&str) -> bool) -> Result<Value<'a>, Error> {
        if self.peek() != Some(b'{') {
            return self.value(2);
        }
        self.pos += 1;
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            if keep(&key) {
                let value = self.value(3)?;
                members.push((key, value));
            } else {
                self.skip_value(3)?;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(Error::NotJson),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, Error> {
        match self.peek() {
            Some(b'{') | Some(b'[') if depth > self.max_depth => {
                self.skip_value(depth)?;
                Ok(Value::Null) // never seen: too_deep fails the document
            }
            Some(b'{') => {
                self.pos += 1;
                let mut members = Vec::new();
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                loop {
                    self.skip_ws();
                    let key = self.string()?;
                    self.skip_ws();
                    self.expect(b':')?;
                    self.skip_ws();
                    let value = self.value(depth + 1)?;
                    members.push((key, value));
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Value::Object(members));
                        }
                        _ => return Err(Error::NotJson),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    self.skip_ws();
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(Error::NotJson),
                    }
                }
            }
            Some(b'"') => Ok(Value::String(self.string()?)),
            _ => self.scalar(),
        }
    }

    fn scalar(&mut self) -> Result<Value<'a>, Error> {
        let rest = &self.bytes[self.pos..];
        if rest.starts_with(b"true") {
            self.pos += 4;
            return Ok(Value::Bool(true));
        }
        if rest.starts_with(b"false") {
            self.pos += 5;
            return Ok(Value::Bool(false));
        }
        if rest.starts_with(b"null") {
            self.pos += 4;
            return Ok(Value::Null);
        }
        Ok(Value::Number(self.number()?))
    }

    /// A value at `depth` checked for syntax but not built, iteratively:
    /// any depth costs a byte per level, never a stack frame.
    fn skip_value(&mut self, depth: usize) -> Result<(), Error> {
        // The closers expected, innermost last; `after` says a value just ended.
        let mut open: Vec<u8> = Vec::new();
        loop {
            self.skip_ws();
            // A value.
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    if depth + open.len() > self.max_depth {
                        self.too_deep = true;
                    }
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        open.push(b'}');
                        self.skip_ws();
                        self.string()?;
                        self.skip_ws();
                        self.expect(b':')?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    if depth + open.len() > self.max_depth {
                        self.too_deep = true;
                    }
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(b']');
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                _ => {
                    self.scalar()?;
                }
            }
            // After a value: a separator, or closers.
            loop {
                let Some(&closer) = open.last() else {
                    return Ok(());
                };
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if closer == b'}' {
                            self.skip_ws();
                            self.string()?;
                            self.skip_ws();
                            self.expect(b':')?;
                        }
                        break;
                    }
                    Some(b) if b == closer => {
                        self.pos += 1;
                        open.pop();
                    }
                    _ => return Err(Error::NotJson),
                }
            }
        }
    }

    fn number(&mut self) -> Result<&'a str, Error> {
        let start = self.pos;
        let b = self.bytes;
        let mut i = self.pos;
        if i < b.len() && b[i] == b'-' {
            i += 1;
        }
        let int_start = i;
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            _ => return Err(Error::NotJson),
        }
        let int_digits = i - int_start;
        let mut plain = true;
        if b.get(i) == Some(&b'.') {
            plain = false;
            i += 1;
            let frac = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == frac {
                return Err(Error::NotJson);
            }
        }
        if matches!(b.get(i), Some(b'e') | Some(b'E')) {
            plain = false;
            i += 1;
            if matches!(b.get(i), Some(b'+') | Some(b'-')) {
                i += 1;
            }
            let exp = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == exp {
                return Err(Error::NotJson);
            }
        }
        if plain && int_digits > MAX_INTEGER_DIGITS {
            return Err(Error::NotJson);
        }
        self.pos = i;
        Ok(&self.text[start..i])
    }

    fn string(&mut self) -> Result<Cow<'a, str>, Error> {
        self.expect(b'"')?;
        let start = self.pos;
        let b = self.bytes;
        let i = special(b, start);
        match b.get(i) {
            Some(b'"') => {
                self.pos = i + 1;
                return Ok(Cow::Borrowed(&self.text[start..i]));
            }
            Some(b'\\') => {}
            _ => return Err(Error::NotJson), // the end, or a control character
        }
        let mut i = i;
        // Escapes: build it.
        let mut out = String::with_capacity(i - start + 16);
        out.push_str(&self.text[start..i]);
        loop {
            let Some(&c) = b.get(i) else {
                return Err(Error::NotJson);
            };
            match c {
                b'"' => {
                    self.pos = i + 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    let Some(&e) = b.get(i + 1) else {
                        return Err(Error::NotJson);
                    };
                    i += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let unit = hex4(b, i)?;
                            i += 4;
                            let code = if (0xD800..0xDC00).contains(&unit) {
                                // A high surrogate must be followed by a low one.
                                if b.get(i) != Some(&b'\\') || b.get(i + 1) != Some(&b'u') {
                                    return Err(Error::NotJson);
                                }
                                let low = hex4(b, i + 2)?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(Error::NotJson);
                                }
                                i += 6;
                                0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&unit) {
                                return Err(Error::NotJson);
                            } else {
                                unit
                            };
                            if code == 0 {
                                self.has_nul = true;
                            }
                            out.push(char::from_u32(code).ok_or(Error::NotJson)?);
                        }
                        _ => return Err(Error::NotJson),
                    }
                }
                c if c < 0x20 => return Err(Error::NotJson),
                _ => {
                    // Copy a run of plain bytes at once (UTF-8 already checked).
                    let run = i;
                    while i < b.len() && b[i] != b'"' && b[i] != b'\\' && b[i] >= 0x20 {
                        i += 1;
                    }
                    out.push_str(&self.text[run..i]);
                }
            }
        }
    }
}

/// The index of the first `"`, `\\` or control character at or after
/// `from` (or `b.len()`), eight bytes at a time: strings are most of an event.
fn special(b: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= b.len() {
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let quote = w ^ (ONES * u64::from(b'"'));
        let slash = w ^ (ONES * u64::from(b'\\'));
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        // Bytes below 0x20 (a set high bit is UTF-8, never a control character).
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let found = zero(quote) | zero(slash) | control;
        if found != 0 {
            // The lowest flagged byte is exact (a borrow only runs upward).
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

fn hex4(b: &[u8], at: usize) -> Result<u32, Error> {
    let digits = b.get(at..at + 4).ok_or(Error::NotJson)?;
    let mut value = 0u32;
    for &d in digits {
        let n = (d as char).to_digit(16).ok_or(Error::NotJson)?;
        value = value * 16 + n;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Result<Value<'_>, Error> {
        Parser::new(text.as_bytes(), 32)?.document().map(|(v, _)| v)
    }

    #[test]
    fn write_strings_are_canonical() {
        let mut out = String::new();
        write_string("a\"b\\c\u{8}\u{c}\n\r\t\u{1}\u{1f}/é\u{7f}", &mut out);
        assert_eq!(out, "\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\\u001f/é\u{7f}\"");
    }

    #[test]
    fn values_write_back_as_compact_json() {
        let text = r#"{"a" : [1.50, true, null, {"b":"x\ny"}], "a": {}}"#;
        let mut out = String::new();
        doc(text).unwrap().write(&mut out);
        assert_eq!(out, r#"{"a":[1.50,true,null,{"b":"x\ny"}],"a":{}}"#);
    }

    #[test]
    fn scalars_and_numbers_keep_their_text() {
        assert_eq!(doc("1.50").unwrap(), Value::Number("1.50"));
        assert_eq!(doc(" -0.0e-300 ").unwrap(), Value::Number("-0.0e-300"));
        assert_eq!(doc("true").unwrap(), Value::Bool(true));
        assert_eq!(doc("null").unwrap(), Value::Null);
        for bad in [
            "01", "1.", ".5", "+1", "1e", "-", "NaN", "Infinity", "1 2", "", " ", "tru",
        ] {
            assert_eq!(doc(bad), Err(Error::NotJson), "{bad}");
        }
    }

    #[test]
    fn strings_escapes_and_surrogates() {
        assert_eq!(doc(r#""a\u00dfb""#).unwrap(), Value::String("aßb".into()));
        assert_eq!(
            doc(r#""\ud83d\ude00""#).unwrap(),
            Value::String("😀".into())
        );
        for bad in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            "\"a\u{1}\"",
            r#""\x""#,
            "\"abc",
        ] {
            assert_eq!(doc(bad), Err(Error::NotJson), "{bad}");
        }
        let mut p = Parser::new(br#"{"a\u0000":1}"#, 32).unwrap();
        let mut slots: [Option<Value>; 1] = [None];
        assert!(p.fields(|_| None, &mut slots).unwrap());
        assert!(p.has_nul);
        assert_eq!(Parser::new(b"\"\xff\"", 32).err(), Some(Error::NotJson));
        assert_eq!(
            Parser::new(b"\"\xed\xa0\x80\"", 32).err(),
            Some(Error::NotJson)
        );
    }

    #[test]
    fn depth_is_bounded_and_checked_without_recursion() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(doc(&deep(32)).is_ok());
        assert_eq!(doc(&deep(33)), Err(Error::TooDeep));
        assert_eq!(doc(&deep(200_000)), Err(Error::TooDeep));
        assert_eq!(doc(&"[".repeat(200_000)), Err(Error::NotJson));
        let inside = format!(r#"{{"x":{}}}"#, deep(31));
        assert!(doc(&inside).is_ok());
        let inside = format!(r#"{{"x":{}}}"#, deep(32));
        assert_eq!(doc(&inside), Err(Error::TooDeep));
    }

    #[test]
    fn skipped_members_are_checked_not_built() {
        let text = br#"{"id":"a","junk":[1,{"b":[true,null,"\u0000"]}],"id":"z","x":2}"#;
        let mut p = Parser::new(text, 32).unwrap();
        let mut slots: [Option<Value>; 2] = [None, None];
        let slot = |k: &str| match k {
            "id" => Some((0, Filter::Whole)),
            "x" => Some((1, Filter::Whole)),
            _ => None,
        };
        assert!(p.fields(slot, &mut slots).unwrap());
        p.finish().unwrap();
        assert!(p.has_nul);
        assert_eq!(slots[0].as_ref().and_then(Value::as_str), Some("z"));
        assert_eq!(slots[1], Some(Value::Number("2")));
        for bad in [&br#"{"junk":[1,}"#[..], br#"{"junk":{"a" 1}}"#, br#"[1,"#] {
            let mut p = Parser::new(bad, 32).unwrap();
            let mut slots: [Option<Value>; 1] = [None];
            assert_eq!(p.fields(|_| None, &mut slots).err(), Some(Error::NotJson));
        }
        let mut p = Parser::new(b"[1, 2]", 32).unwrap();
        let mut slots: [Option<Value>; 1] = [None];
        assert!(!p.fields(|_| None, &mut slots).unwrap());
    }

    #[test]
    fn repeated_keys_take_the_last_value_at_the_first_place() {
        let v = doc(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        assert_eq!(v.get("a"), Some(&Value::Number("3")));
        let members = v.members();
        assert_eq!(members[0], ("a", &Value::Number("3")));
        assert_eq!(members.len(), 2);
    }

    #[test]
    fn huge_integers_are_refused_like_python() {
        let big = "9".repeat(MAX_INTEGER_DIGITS);
        assert!(doc(&big).is_ok());
        assert_eq!(doc(&format!("{big}9")), Err(Error::NotJson));
        assert!(doc(&format!("{big}9.5")).is_ok());
    }

    #[test]
    fn the_fast_scan_finds_what_the_slow_one_does() {
        let naive = |b: &[u8], from: usize| {
            (from..b.len())
                .find(|&i| matches!(b[i], b'"' | b'\\' | 0..=0x1f))
                .unwrap_or(b.len())
        };
        let mut seed = 7u64;
        for _ in 0..20_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 33) as usize % 40;
            let bytes: Vec<u8> = (0..len)
                .map(|k| {
                    let x = seed.rotate_left(k as u32 * 7) as u8;
                    // mostly plain text, some specials and UTF-8 bytes
                    match x % 16 {
                        0 => b'"',
                        1 => b'\\',
                        2 => x % 0x20,
                        3 => 0x80 | x,
                        _ => b'a' + x % 26,
                    }
                })
                .collect();
            for from in 0..=bytes.len() {
                assert_eq!(
                    special(&bytes, from),
                    naive(&bytes, from),
                    "{bytes:?} from {from}"
                );
            }
        }
    }

    #[test]
    fn a_byte_order_mark_may_lead() {
        assert!(Parser::new(b"\xef\xbb\xbf{}", 32)
            .unwrap()
            .document()
            .is_ok());
    }
}
