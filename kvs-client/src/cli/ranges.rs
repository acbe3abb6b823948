//! Range reads and deletes, transactions, values from files or stdin, raw output and hex
//! keys: the subcommands and flags that carry arbitrary bytes.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kvs_client::{Client, KeyRange, RangeOptions};
use serde_json::{json, Map, Value};

use super::args::Format;
use super::commands::{fail, print_json, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE};
use super::{output, txn_file};

/// How the key arguments are written and how results are printed.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// Keys are given (and printed) in hex.
    pub hex: bool,
    /// The output format.
    pub format: Format,
}

/// What `get` reads.
#[derive(Debug, Default)]
pub struct GetArgs {
    /// The key, or the first key of the range.
    pub key: Option<String>,
    /// A prefix instead.
    pub prefix: Option<String>,
    /// The end of the range.
    pub to: Option<String>,
    /// The most keys.
    pub limit: Option<u64>,
    /// Keys only.
    pub keys_only: bool,
    /// Only the count.
    pub count_only: bool,
    /// Any replica.
    pub stale: bool,
    /// The exact bytes of one value.
    pub raw: bool,
}

impl GetArgs {
    /// Whether the arguments ask for a range rather than one key.
    pub fn is_range(&self) -> bool {
        self.prefix.is_some()
            || self.to.is_some()
            || self.limit.is_some()
            || self.keys_only
            || self.count_only
    }
}

/// A key argument as bytes: as given, or decoded from hex.
pub fn key_bytes(text: &str, hex: bool) -> Result<Bytes, String> {
    if !hex {
        return Ok(Bytes::copy_from_slice(text.as_bytes()));
    }
    if !text.len().is_multiple_of(2) {
        return Err(format!("{text:?} is not hex: an odd number of digits"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{text:?} is not hex"))
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(Bytes::from)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn usage(message: &str) -> u8 {
    eprintln!("error: {message}");
    EXIT_USAGE
}

/// The range of `--prefix P` or `KEY --to END` (or `KEY` on: every key from it).
fn key_range(
    key: Option<&str>,
    prefix: Option<&str>,
    to: Option<&str>,
    hex: bool,
) -> Result<KeyRange, String> {
    match (prefix, key) {
        (Some(prefix), _) => Ok(KeyRange::prefix(key_bytes(prefix, hex)?)),
        (None, Some(key)) => {
            let from = key_bytes(key, hex)?;
            match to {
                Some(to) => Ok(KeyRange::between(from, key_bytes(to, hex)?)),
                None => Ok(KeyRange::from_key(from)),
            }
        }
        (None, None) => Err("give a KEY or --prefix".to_owned()),
    }
}

/// `put KEY VALUE|-` or `put KEY --from-file F` (and any put with `--hex`).
pub async fn put(
    client: &Client,
    key: &str,
    value: Option<OsString>,
    from_file: Option<PathBuf>,
    style: Style,
) -> u8 {
    let key = match key_bytes(key, style.hex) {
        Ok(key) => key,
        Err(e) => return usage(&e),
    };
    let value = match (value, from_file) {
        (_, Some(path)) => read_value(Some(&path)),
        (Some(v), None) if v == "-" => read_value(None),
        (Some(v), None) => Ok(Bytes::from(v.into_encoded_bytes())),
        (None, None) => Err("give a VALUE, - (stdin) or --from-file F".to_owned()),
    };
    let value = match value {
        Ok(value) => value,
        Err(e) => return usage(&e),
    };
    match client.put(key, value).await {
        Ok(()) => {
            if style.format == Format::Json {
                print_json(&json!({ "ok": true }));
            }
            EXIT_OK
        }
        Err(e) => fail(&e),
    }
}

/// Reads a value from a file or stdin, refusing more than the server's value limit
/// before reading it all.
fn read_value(path: Option<&Path>) -> Result<Bytes, String> {
    let max = wire::VALUE_BYTES_MAX;
    let mut bytes = Vec::new();
    let (read, what) = match path {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let read = file.take(max as u64 + 1).read_to_end(&mut bytes);
            (read, path.display().to_string())
        }
        None => {
            let read = std::io::stdin()
                .lock()
                .take(max as u64 + 1)
                .read_to_end(&mut bytes);
            (read, "stdin".to_owned())
        }
    };
    read.map_err(|e| format!("cannot read {what}: {e}"))?;
    if bytes.len() > max {
        return Err(format!(
            "the value in {what} is larger than the server's value limit of {max} bytes"
        ));
    }
    Ok(Bytes::from(bytes))
}

/// `get KEY [--raw]` with `--hex` or `--raw`, or any range read.
pub async fn get(client: &Client, args: GetArgs, style: Style) -> u8 {
    if args.limit == Some(0) {
        return usage("--limit must be at least 1");
    }
    if !args.is_range() {
        return get_one(client, &args, style).await;
    }
    let range = match key_range(
        args.key.as_deref(),
        args.prefix.as_deref(),
        args.to.as_deref(),
        style.hex,
    ) {
        Ok(range) => range,
        Err(e) => return usage(&e),
    };
    if args.count_only {
        return match client.count(range, args.limit, args.stale).await {
            Ok(count) => {
                match style.format {
                    Format::Json => print_json(&json!({ "count": count })),
                    Format::Text | Format::Table => println!("{count}"),
                }
                EXIT_OK
            }
            Err(e) => fail(&e),
        };
    }
    let options = RangeOptions {
        limit: args.limit,
        keys_only: args.keys_only,
        stale: args.stale,
    };
    print_range(client, range, options, style).await
}

/// Prints every page of a range as it arrives: text (key line, then value line), a table,
/// or one JSON object `{"kvs": [...], "count": N}` written incrementally.
async fn print_range(client: &Client, range: KeyRange, options: RangeOptions, style: Style) -> u8 {
    let mut pager = client.range(range, options);
    let mut stdout = std::io::stdout().lock();
    let mut count = 0u64;
    if style.format == Format::Json {
        let _ = write!(stdout, "{{\"kvs\":[");
    }
    loop {
        let page = match pager.next_page().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(e) => {
                let _ = stdout.flush();
                return fail(&e);
            }
        };
        let mut rows = Vec::new();
        if style.format == Format::Table && count == 0 {
            let mut header = vec!["KEY".to_owned()];
            if !options.keys_only {
                header.push("VALUE".to_owned());
            }
            rows.push(header);
        }
        for entry in &page {
            let written = match style.format {
                Format::Json => {
                    let mut object = Map::new();
                    key_field(&mut object, &entry.key, style.hex);
                    if !options.keys_only {
                        output::put_bytes(&mut object, "value", entry.value.as_deref());
                    }
                    let comma = if count == 0 { "" } else { "," };
                    write!(stdout, "{comma}{}", Value::Object(object))
                }
                Format::Text => {
                    let key = key_text(&entry.key, style.hex);
                    stdout
                        .write_all(&key)
                        .and_then(|()| stdout.write_all(b"\n"))
                        .and_then(|()| match &entry.value {
                            Some(v) => stdout.write_all(v).and_then(|()| stdout.write_all(b"\n")),
                            None => Ok(()),
                        })
                }
                Format::Table => {
                    let mut row = vec![
                        String::from_utf8_lossy(&key_text(&entry.key, style.hex)).into_owned()
                    ];
                    if let Some(v) = &entry.value {
                        row.push(output::quoted(v));
                    }
                    rows.push(row);
                    Ok(())
                }
            };
            if written.is_err() {
                return EXIT_OK; // a closed pipe (`| head`): stop quietly
            }
            count += 1;
        }
        if style.format == Format::Table {
            let columns = if options.keys_only { 1 } else { 2 };
            let _ = stdout.write_all(output::layout_table(&rows, columns).as_bytes());
        }
    }
    if style.format == Format::Json {
        let _ = writeln!(stdout, "],\"count\":{count}}}");
    }
    let _ = stdout.flush();
    EXIT_OK
}

fn key_text(key: &[u8], hex: bool) -> Vec<u8> {
    if hex {
        hex_of(key).into_bytes()
    } else {
        key.to_vec()
    }
}

fn key_field(object: &mut Map<String, Value>, key: &[u8], hex: bool) {
    if hex {
        object.insert("key".to_owned(), json!(hex_of(key)));
        object.insert("key_encoding".to_owned(), json!("hex"));
    } else {
        output::put_bytes(object, "key", Some(key));
    }
}

/// One key, with `--hex` or `--raw` (or a table).
async fn get_one(client: &Client, args: &GetArgs, style: Style) -> u8 {
    let Some(text) = args.key.as_deref() else {
        return usage("give a KEY or --prefix");
    };
    let key = match key_bytes(text, style.hex) {
        Ok(key) => key,
        Err(e) => return usage(&e),
    };
    let read = if args.stale {
        client.get_stale(key.clone()).await
    } else {
        client.get(key.clone()).await
    };
    let value = match read {
        Ok(value) => value,
        Err(e) => return fail(&e),
    };
    let Some(value) = value else {
        if style.format == Format::Json {
            let mut object = Map::new();
            key_field(&mut object, &key, style.hex);
            object.insert("found".to_owned(), json!(false));
            output::put_bytes(&mut object, "value", None);
            print_json(&Value::Object(object));
        } else {
            eprintln!("key not found: {}", output::quoted(&key));
        }
        return EXIT_NOT_FOUND;
    };
    let mut stdout = std::io::stdout().lock();
    let _ = match style.format {
        Format::Json => {
            let mut object = Map::new();
            key_field(&mut object, &key, style.hex);
            object.insert("found".to_owned(), json!(true));
            output::put_bytes(&mut object, "value", Some(&value));
            writeln!(stdout, "{}", Value::Object(object))
        }
        _ if args.raw => stdout.write_all(&value),
        Format::Table => {
            let rows = vec![
                vec!["KEY".to_owned(), "VALUE".to_owned()],
                vec![
                    String::from_utf8_lossy(&key_text(&key, style.hex)).into_owned(),
                    output::quoted(&value),
                ],
            ];
            stdout.write_all(output::layout_table(&rows, 2).as_bytes())
        }
        Format::Text => stdout
            .write_all(&value)
            .and_then(|()| stdout.write_all(b"\n")),
    };
    let _ = stdout.flush();
    EXIT_OK
}

/// `del --prefix P`, `del KEY --to END`: prints how many keys were removed. Also `del KEY`
/// with `--hex`.
pub async fn del(
    client: &Client,
    key: Option<String>,
    prefix: Option<String>,
    to: Option<String>,
    style: Style,
) -> u8 {
    if prefix.is_none() && to.is_none() {
        let Some(key) = key.as_deref().map(|k| key_bytes(k, style.hex)) else {
            return usage("give a KEY or --prefix");
        };
        let key = match key {
            Ok(key) => key,
            Err(e) => return usage(&e),
        };
        return match client.delete(key.clone()).await {
            Ok(existed) => {
                if style.format == Format::Json {
                    let mut object = Map::new();
                    key_field(&mut object, &key, style.hex);
                    object.insert("existed".to_owned(), json!(existed));
                    print_json(&Value::Object(object));
                } else if !existed {
                    eprintln!("key not found: {}", output::quoted(&key));
                }
                if existed {
                    EXIT_OK
                } else {
                    EXIT_NOT_FOUND
                }
            }
            Err(e) => fail(&e),
        };
    }
    let range = match key_range(key.as_deref(), prefix.as_deref(), to.as_deref(), style.hex) {
        Ok(range) => range,
        Err(e) => return usage(&e),
    };
    match client.delete_range(range).await {
        Ok(count) => {
            match style.format {
                Format::Json => print_json(&json!({ "deleted": count })),
                Format::Text | Format::Table => println!("{count}"),
            }
            EXIT_OK
        }
        Err(e) => fail(&e),
    }
}

/// `txn [--file F]`: SUCCESS (exit 0) or FAILURE (exit 1); a malformed transaction exits
/// 2 naming its line.
pub async fn txn(client: &Client, file: Option<PathBuf>, style: Style) -> u8 {
    let mut text = String::new();
    let read = match &file {
        Some(path) => std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text)),
        None => std::io::stdin().lock().read_to_string(&mut text),
    };
    let source = file
        .as_ref()
        .map_or("stdin".to_owned(), |p| p.display().to_string());
    if let Err(e) = read {
        return usage(&format!("cannot read the transaction from {source}: {e}"));
    }
    let txn = match txn_file::parse(&text) {
        Ok(txn) => txn,
        Err(e) => return usage(&format!("{source}: {e}")),
    };
    match client.txn(txn).await {
        Ok(succeeded) => {
            let word = if succeeded { "SUCCESS" } else { "FAILURE" };
            match style.format {
                Format::Json => print_json(&json!({ "succeeded": succeeded })),
                Format::Text | Format::Table => println!("{word}"),
            }
            if succeeded {
                EXIT_OK
            } else {
                EXIT_NOT_FOUND
            }
        }
        Err(e) => fail(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_decode_or_are_refused() {
        assert_eq!(
            key_bytes("00ff41", true),
            Ok(Bytes::from_static(b"\x00\xffA"))
        );
        assert_eq!(
            key_bytes("00ff41", false),
            Ok(Bytes::from_static(b"00ff41"))
        );
        assert!(key_bytes("0", true).is_err());
        assert!(key_bytes("zz", true).is_err());
        assert!(key_bytes("é1", true).is_err());
        assert_eq!(hex_of(b"\x00\xffA"), "00ff41");
    }
}
