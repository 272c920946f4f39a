//! Attribute access and rendering.

use crate::proto::{any_value::Value, AnyValue, KeyValue, Resource};

/// The value of `key` among `attrs`, if present.
pub fn get<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// The string value of `key`, if present and a string.
pub fn get_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match get(attrs, key)?.value.as_ref()? {
        Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    }
}

/// `service.name` of a resource; `unknown_service` (as the SDKs say) when absent.
pub fn service_name(resource: Option<&Resource>) -> &str {
    resource
        .and_then(|r| get_str(&r.attributes, "service.name"))
        .unwrap_or("unknown_service")
}

/// Renders a value as plain text: strings as they are, numbers and booleans as literals,
/// arrays and maps as JSON-like text, bytes as hex.
pub fn render(value: &AnyValue) -> String {
    match &value.value {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex::encode(b),
        Some(Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(render_quoted).collect();
            format!("[{}]", items.join(","))
        }
        Some(Value::KvlistValue(kv)) => {
            let items: Vec<String> = kv
                .values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().map(render_quoted).unwrap_or_default();
                    format!("{:?}:{}", kv.key, v)
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Some(Value::StringValueStrindex(i)) => i.to_string(),
    }
}

fn render_quoted(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => format!("{s:?}"),
        _ => render(value),
    }
}

/// The type name Tempo uses for a value in tag-value answers.
pub fn type_name(value: &AnyValue) -> &'static str {
    match &value.value {
        Some(Value::StringValue(_)) | None => "string",
        Some(Value::BoolValue(_)) => "bool",
        Some(Value::IntValue(_)) => "int",
        Some(Value::DoubleValue(_)) => "float",
        Some(Value::BytesValue(_)) => "bytes",
        Some(Value::ArrayValue(_)) => "array",
        Some(Value::KvlistValue(_)) => "kvlist",
        Some(Value::StringValueStrindex(_)) => "int",
    }
}

/// A string attribute, for building spans and resources.
pub fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ArrayValue;

    #[test]
    fn render_values() {
        let arr = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![kv_str("", "a").value.unwrap(), kv_int("", 3).value.unwrap()],
            })),
        };
        assert_eq!(render(&arr), r#"["a",3]"#);
        let attrs = vec![kv_str("service.name", "api"), kv_int("port", 80)];
        assert_eq!(get_str(&attrs, "service.name"), Some("api"));
        assert_eq!(get_str(&attrs, "port"), None);
        assert_eq!(render(get(&attrs, "port").unwrap()), "80");
    }
}
