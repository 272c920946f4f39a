//! Trace and span ids: raw bytes inside, lowercase hex outside.

use std::fmt;
use std::str::FromStr;

/// What is wrong with an id given as text or bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    #[error("{kind} id {text:?} is longer than {max} hex characters")]
    TooLong {
        kind: &'static str,
        text: String,
        max: usize,
    },
    #[error("{kind} id {text:?} is not hexadecimal")]
    NotHex { kind: &'static str, text: String },
    #[error("{kind} id has {len} bytes, expected {expected}")]
    WrongLength {
        kind: &'static str,
        len: usize,
        expected: usize,
    },
}

macro_rules! id_type {
    ($name:ident, $len:expr, $kind:expr) => {
        #[doc = concat!("A ", $kind, " id: ", stringify!($len), " raw bytes.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            /// From exactly `LEN` bytes, as OTLP protobuf carries them.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| IdError::WrongLength {
                    kind: $kind,
                    len: bytes.len(),
                    expected: $len,
                })?;
                Ok(Self(arr))
            }

            /// Parses hex text; shorter ids are left-padded with zeros (as Tempo does,
            /// so a 64-bit Jaeger trace id `abc` means `000…0abc`).
            pub fn parse_hex(text: &str) -> Result<Self, IdError> {
                let text = text.trim();
                if text.is_empty() {
                    return Err(IdError::Empty { kind: $kind });
                }
                if text.len() > $len * 2 {
                    return Err(IdError::TooLong {
                        kind: $kind,
                        text: text.to_string(),
                        max: $len * 2,
                    });
                }
                let padded = format!("{:0>width$}", text, width = $len * 2);
                let mut out = [0u8; $len];
                hex::decode_to_slice(&padded, &mut out).map_err(|_| IdError::NotHex {
                    kind: $kind,
                    text: text.to_string(),
                })?;
                Ok(Self(out))
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn is_zero(&self) -> bool {
                self.0.iter().all(|b| *b == 0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse_hex(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }
    };
}

id_type!(TraceId, 16, "trace");
id_type!(SpanId, 8, "span");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_padding() {
        let id: TraceId = "5B8EFFF798038103D269B633813FC60C".parse().unwrap();
        assert_eq!(id.to_string(), "5b8efff798038103d269b633813fc60c");
        let short: TraceId = "abc".parse().unwrap();
        assert_eq!(short.to_string(), "00000000000000000000000000000abc");
        let span = SpanId::from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(span.to_hex(), "0102030405060708");
    }

    #[test]
    fn bad_ids_say_what_is_wrong() {
        assert!(matches!(
            "xyz".parse::<TraceId>(),
            Err(IdError::NotHex { .. })
        ));
        assert!(matches!(
            "0".repeat(33).parse::<TraceId>(),
            Err(IdError::TooLong { .. })
        ));
        assert!(matches!("".parse::<SpanId>(), Err(IdError::Empty { .. })));
        let e = TraceId::from_slice(&[1, 2]).unwrap_err();
        assert_eq!(e.to_string(), "trace id has 2 bytes, expected 16");
    }
}
