//! JSON exactly as the Python tracker writes it: numbers as the caller gave them
//! ([`Number`]: `9` stays `9`, `9.0` stays `9.0`, floats in Python's `repr`), object
//! members in the order they were added, and `json.dumps`'s default separators (`", "`
//! and `": "`) inside `cx`/`co` and `ue_px`/`ue_pr`. The same calls through the Python
//! tracker and this one therefore give the same bytes at the collector.

use std::io;

use serde::Serialize;
use serde_json::Value;
use serde_json::ser::{Formatter, Serializer};

use crate::Error;

/// A number as the caller gave it: a whole number is sent whole (`9`), a decimal as a
/// decimal (`9.0`, `6.88`), as the Python tracker sends an `int` and a `float`. (A Rust
/// `f64` alone cannot tell `9` from `9.0`.)
///
/// ```
/// use snowplow_relay_tracker::Number;
/// assert_eq!(Number::from(9).to_string(), "9");
/// assert_eq!(Number::from(9.0).to_string(), "9.0");
/// assert_eq!("2.50".parse::<Number>().unwrap().to_string(), "2.5");
/// assert_eq!("1e16".parse::<Number>().unwrap().to_string(), "1e+16");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A whole number (Python `int`).
    Whole(i64),
    /// A decimal number (Python `float`); must be finite to be sent.
    Decimal(f64),
}

impl Default for Number {
    /// Zero, whole.
    fn default() -> Number {
        Number::Whole(0)
    }
}

macro_rules! whole_from {
    ($($ty:ty),*) => {$(
        impl From<$ty> for Number {
            fn from(n: $ty) -> Number {
                Number::Whole(i64::from(n))
            }
        }
    )*};
}
whole_from!(i8, i16, i32, i64, u8, u16, u32);

impl From<f64> for Number {
    fn from(n: f64) -> Number {
        Number::Decimal(n)
    }
}

impl From<f32> for Number {
    fn from(n: f32) -> Number {
        Number::Decimal(f64::from(n))
    }
}

impl std::str::FromStr for Number {
    type Err = String;

    /// `9` is whole, `9.0`, `9.5` and `1e3` are decimals (as Python's `json.loads` reads
    /// them).
    fn from_str(text: &str) -> Result<Number, String> {
        if let Ok(whole) = text.parse::<i64>() {
            return Ok(Number::Whole(whole));
        }
        match text.parse::<f64>() {
            Ok(decimal) if decimal.is_finite() => Ok(Number::Decimal(decimal)),
            _ => Err(format!(
                "expected a finite number such as 9 or 9.99, not {text:?}"
            )),
        }
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Whole(n) => write!(f, "{n}"),
            Number::Decimal(n) => f.write_str(&python_float(*n)),
        }
    }
}

impl Number {
    /// As a JSON value, or the typed error naming `field` for NaN and infinities.
    pub(crate) fn to_json(self, field: &'static str) -> Result<Value, Error> {
        match self {
            Number::Whole(n) => Ok(Value::from(n)),
            Number::Decimal(n) => serde_json::Number::from_f64(n)
                .map(Value::Number)
                .ok_or(Error::NonFinite { field, value: n }),
        }
    }
}

/// `repr(float)` in Python 3: the shortest digits that read back as the same number, in
/// fixed notation from 1e-4 up to 1e16 (`9.0`, `0.0001`), scientific outside it (`1e-05`,
/// `1.5e+16`).
pub fn python_float(n: f64) -> String {
    if !n.is_finite() {
        // Not valid JSON; never sent (see `Number::to_json`), but printable.
        return n.to_string();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits: `d.ddde[-]x`.
    let scientific = format!("{:e}", n.abs());
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("{:e} always writes an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} writes a whole exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if n.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point
        let text = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{text}")
    } else {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{sign}{first}{fraction}e{exponent_sign}{:02}",
            exponent.abs()
        )
    }
}

/// serde_json's formatter with Python's float `repr`, and optionally `json.dumps`'s
/// default separators.
struct PythonFormatter {
    spaced: bool,
}

impl PythonFormatter {
    /// Between array values and object members: `", "` (Python) or `","` (compact).
    fn separator<W: ?Sized + io::Write>(&self, writer: &mut W, first: bool) -> io::Result<()> {
        match (first, self.spaced) {
            (true, _) => Ok(()),
            (false, true) => writer.write_all(b", "),
            (false, false) => writer.write_all(b","),
        }
    }
}

impl Formatter for PythonFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(python_float(value).as_bytes())
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(if self.spaced { b": " } else { b":" })
    }
}

fn write(value: &impl Serialize, spaced: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = Serializer::with_formatter(&mut out, PythonFormatter { spaced });
    value
        .serialize(&mut serializer)
        .expect("JSON values and payloads always serialise");
    out
}

/// `json.dumps(value, ensure_ascii=False)`: what the Python tracker puts, base64-encoded
/// or not, into `cx`/`co` and `ue_px`/`ue_pr`.
pub fn python_dumps(value: &impl Serialize) -> String {
    String::from_utf8(write(value, true)).expect("serde_json writes UTF-8")
}

/// Compact JSON with Python's float `repr`: one list element as the RedisEmitter pushes
/// it (its spacing is the relay's to drop; the values are what the collector sees).
pub fn compact(value: &impl Serialize) -> Vec<u8> {
    write(value, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_python_repr_writes_them() {
        // Each pair checked against CPython 3.11's repr().
        for (n, python) in [
            (9.0, "9.0"),
            (6.88, "6.88"),
            (-0.5, "-0.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456789012345.6, "123456789012345.6"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e100, "1e+100"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            assert_eq!(python_float(n), python, "{n:e}");
        }
    }

    #[test]
    fn numbers_keep_what_the_caller_gave() {
        assert_eq!(Number::from(9).to_json("f").unwrap().to_string(), "9");
        assert_eq!(compact(&Number::from(9.0).to_json("f").unwrap()), b"9.0");
        assert_eq!("9".parse::<Number>(), Ok(Number::Whole(9)));
        assert_eq!("9.0".parse::<Number>(), Ok(Number::Decimal(9.0)));
        assert!("NaN".parse::<Number>().is_err());
        assert!("nine".parse::<Number>().is_err());
        assert!(matches!(
            Number::from(f64::INFINITY).to_json("se_va"),
            Err(Error::NonFinite { field: "se_va", .. })
        ));
    }

    #[test]
    fn dumps_uses_pythons_separators_and_keeps_member_order() {
        let value: Value = serde_json::from_str(
            r#"{"schema":"iglu:a/b/jsonschema/1-0-0","data":{"z":1,"a":[1.0,"é"]}}"#,
        )
        .unwrap();
        assert_eq!(
            python_dumps(&value),
            r#"{"schema": "iglu:a/b/jsonschema/1-0-0", "data": {"z": 1, "a": [1.0, "é"]}}"#
        );
        assert_eq!(
            String::from_utf8(compact(&value)).unwrap(),
            r#"{"schema":"iglu:a/b/jsonschema/1-0-0","data":{"z":1,"a":[1.0,"é"]}}"#
        );
    }
}
