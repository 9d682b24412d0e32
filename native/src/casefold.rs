//! Full Unicode case folding, exactly Python's `str.casefold`.
//!
//! The table is generated from Python itself (native/gen/casefold.py), so
//! `Email`, `EMAIL` and `email` (and `ß`, `SS`, `ss`) are one value here
//! exactly when they are one value for Python. Rust's `to_lowercase` is not
//! case folding (it maps `ß` to itself and `ẞ` to `ß`, not `ss`).

use std::borrow::Cow;

#[path = "casefold_table.rs"]
mod table;

fn fold_char(c: char, out: &mut String) {
    let code = c as u32;
    if code < 0x80 {
        out.push(c.to_ascii_lowercase());
        return;
    }
    match table::FOLDS.binary_search_by_key(&code, |&(k, _)| k) {
        Ok(i) => out.push_str(table::FOLDS[i].1),
        Err(_) => out.push(c),
    }
}

/// `text.casefold()`, borrowing when nothing changes (the common case).
pub fn casefold(text: &str) -> Cow<'_, str> {
    let needs = text.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80);
    if !needs {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        fold_char(c, &mut out);
    }
    if out == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_like_python() {
        assert_eq!(casefold("Email"), "email");
        assert_eq!(casefold("STRASSE"), "strasse");
        assert_eq!(casefold("straße"), "strasse");
        assert_eq!(casefold("ẞ"), "ss");
        assert_eq!(casefold("İ"), "i\u{307}");
        assert_eq!(casefold("ﬁ"), "fi");
        assert_eq!(casefold("Σς"), "σσ");
        assert_eq!(casefold("K"), "k"); // KELVIN SIGN
        assert!(matches!(casefold("already folded"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_table_is_sorted() {
        assert!(table::FOLDS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
