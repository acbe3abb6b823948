//! The text form of a transaction read by `kvs-client txn`, in the spirit of etcdctl's:
//!
//! ```text
//! # Lines starting with '#' are comments.
//! value("config/owner") = "alice"
//! exists("config/lock")
//! absent("config/new")
//!
//! put config/owner bob
//! del "config/lock"
//!
//! put "audit/failed" "owner was not alice"
//! ```
//!
//! Three sections, each ended by a blank line: the compares (all must hold), the
//! operations applied if they do, the operations applied otherwise. Any section may be
//! empty (a file starting with a blank line has no compares). A compare is
//! `value(KEY) = VALUE`, `exists(KEY)` or `absent(KEY)`; an operation is `put KEY VALUE`
//! or `del KEY`. A key or value is a word without spaces, quotes or parentheses, or a
//! double-quoted string with the escapes `\"`, `\\`, `\n`, `\t`, `\r` and `\xHH` (any
//! byte).

use bytes::Bytes;
use kvs_client::{Compare, Txn, TxnOp};

/// A line that is not part of the syntax: its number (from 1) and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct TxnSyntaxError {
    /// The line, from 1.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for TxnSyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(Vec<u8>),
    Quoted(Vec<u8>),
    Open,
    Close,
    Equals,
}

/// Reads a transaction from its text form.
pub fn parse(text: &str) -> Result<Txn, TxnSyntaxError> {
    let mut txn = Txn::default();
    let mut section = 0usize;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if trimmed.is_empty() {
            section += 1;
            continue;
        }
        if section > 2 {
            return Err(TxnSyntaxError {
                line,
                reason: "a transaction has three sections (compares, success, failure) \
                         separated by single blank lines"
                    .to_owned(),
            });
        }
        let err = |reason: String| TxnSyntaxError { line, reason };
        let tokens = tokenize(trimmed).map_err(err)?;
        match section {
            0 => txn.compares.push(compare(tokens).map_err(err)?),
            1 => txn.success.push(operation(tokens).map_err(err)?),
            _ => txn.failure.push(operation(tokens).map_err(err)?),
        }
    }
    Ok(txn)
}

fn compare(tokens: Vec<Token>) -> Result<Compare, String> {
    let mut it = tokens.into_iter();
    let usage = "a compare is value(KEY) = VALUE, exists(KEY) or absent(KEY)";
    let Some(Token::Word(name)) = it.next() else {
        return Err(usage.to_owned());
    };
    let (Some(Token::Open), Some(key), Some(Token::Close)) = (it.next(), it.next(), it.next())
    else {
        return Err(usage.to_owned());
    };
    let key = string(key).ok_or(usage)?;
    let compare = match &name[..] {
        b"value" => {
            let (Some(Token::Equals), Some(value), None) = (it.next(), it.next(), it.next()) else {
                return Err(usage.to_owned());
            };
            let value = string(value).ok_or(usage)?;
            return Ok(Compare::Value { key, value });
        }
        b"exists" => Compare::Exists { key },
        b"absent" => Compare::Absent { key },
        other => {
            return Err(format!(
                "unknown compare {:?}: {usage}",
                String::from_utf8_lossy(other)
            ))
        }
    };
    match it.next() {
        None => Ok(compare),
        Some(_) => Err(format!("unexpected text after the compare: {usage}")),
    }
}

fn operation(tokens: Vec<Token>) -> Result<TxnOp, String> {
    let usage = "an operation is put KEY VALUE or del KEY";
    let mut it = tokens.into_iter();
    let Some(Token::Word(name)) = it.next() else {
        return Err(usage.to_owned());
    };
    let args: Vec<Bytes> = it.map(string).collect::<Option<_>>().ok_or(usage)?;
    match (&name[..], &args[..]) {
        (b"put", [key, value]) => Ok(TxnOp::Put {
            key: key.clone(),
            value: value.clone(),
        }),
        (b"del", [key]) => Ok(TxnOp::Delete { key: key.clone() }),
        (b"put" | b"del", _) => Err(format!("wrong number of arguments: {usage}")),
        (other, _) => Err(format!(
            "unknown operation {:?}: {usage}",
            String::from_utf8_lossy(other)
        )),
    }
}

fn string(token: Token) -> Option<Bytes> {
    match token {
        Token::Word(bytes) | Token::Quoted(bytes) => Some(Bytes::from(bytes)),
        Token::Open | Token::Close | Token::Equals => None,
    }
}

fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            '=' => tokens.push(Token::Equals),
            '"' => tokens.push(Token::Quoted(quoted(&mut chars)?)),
            c => {
                let mut word = String::from(c);
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | '=' | '"') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word.into_bytes()));
            }
        }
    }
    Ok(tokens)
}

fn quoted(chars: &mut impl Iterator<Item = (usize, char)>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let Some((_, c)) = chars.next() else {
            return Err("a quoted string is not closed".to_owned());
        };
        match c {
            '"' => return Ok(out),
            '\\' => {
                let escaped = match chars.next().map(|(_, c)| c) {
                    Some('"') => b'"',
                    Some('\\') => b'\\',
                    Some('n') => b'\n',
                    Some('t') => b'\t',
                    Some('r') => b'\r',
                    Some('x') => {
                        let hex: String = chars.take(2).map(|(_, c)| c).collect();
                        u8::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == 2)
                            .ok_or_else(|| format!("\\x needs two hex digits, not {hex:?}"))?
                    }
                    other => {
                        return Err(format!(
                            "unknown escape \\{} (use \\\" \\\\ \\n \\t \\r or \\xHH)",
                            other.map(String::from).unwrap_or_default()
                        ))
                    }
                };
                out.push(escaped);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    #[test]
    fn the_documented_example_parses() {
        let text = "# owner change\nvalue(\"config/owner\") = \"alice\"\nexists(config/lock)\n\
                    absent(\"config/new\")\n\nput config/owner bob\ndel \"config/lock\"\n\n\
                    put \"audit/\\xff\" \"a \\\"b\\\"\"\n";
        let txn = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            txn.compares,
            vec![
                Compare::Value {
                    key: b(b"config/owner"),
                    value: b(b"alice")
                },
                Compare::Exists {
                    key: b(b"config/lock")
                },
                Compare::Absent {
                    key: b(b"config/new")
                },
            ]
        );
        assert_eq!(
            txn.success,
            vec![
                TxnOp::Put {
                    key: b(b"config/owner"),
                    value: b(b"bob")
                },
                TxnOp::Delete {
                    key: b(b"config/lock")
                },
            ]
        );
        assert_eq!(
            txn.failure,
            vec![TxnOp::Put {
                key: b(b"audit/\xff"),
                value: b(b"a \"b\"")
            }]
        );
    }

    #[test]
    fn malformed_lines_are_named() {
        let cases: [(&str, usize); 7] = [
            ("value(\"k\") \"v\"\n", 1),
            ("exists(k)\n\nput k\n", 3),
            ("exists(k)\n\nmove k v\n", 3),
            ("exists(\"k)\n", 1),
            ("present(k)\n", 1),
            ("\n\n\nput k v\n", 4),
            ("\nput \"\\q\" v\n", 2),
        ];
        for (text, line) in cases {
            match parse(text) {
                Err(e) => assert_eq!(e.line, line, "{text:?}: {e}"),
                Ok(txn) => panic!("{text:?} parsed as {txn:?}"),
            }
        }
    }

    #[test]
    fn sections_may_be_empty() {
        let txn = parse("\nput k v\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(txn.compares.is_empty() && txn.failure.is_empty());
        assert_eq!(txn.success.len(), 1);
    }
}
