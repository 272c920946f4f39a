//! The `resource` processor: changes resource attributes with the same actions as the
//! `attributes` processor ([`super::attributes::Actions`]: insert, update, upsert, delete, hash,
//! extract, convert; `pattern` for delete/hash). There is no include/exclude, as in the
//! reference. `from_context` is refused (Sextant carries no client metadata down the pipeline).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sextant_otlp_proto::proto::{Resource, ResourceSpans};

use super::attributes::{ActionConfig, Actions};
use super::SpanProcessor;
use crate::metrics::CollectorMetrics;

/// The processor's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub attributes: Vec<ActionConfig>,
}

struct ResourceProcessor {
    actions: Actions,
}

impl SpanProcessor for ResourceProcessor {
    fn process(&self, spans: &mut Vec<ResourceSpans>) {
        for rs in spans.iter_mut() {
            let resource = rs.resource.get_or_insert_with(Resource::default);
            self.actions.apply(&mut resource.attributes);
        }
    }
}

/// Builds the processor.
pub fn build(
    name: &str,
    config: &Config,
    _metrics: &CollectorMetrics,
) -> Result<Arc<dyn SpanProcessor>, String> {
    let actions = Actions::compile(&config.attributes).map_err(|e| {
        // The resource processor's list is called `attributes`.
        match e.strip_prefix("actions") {
            Some(rest) => format!("attributes{rest}"),
            None => e,
        }
    })?;
    tracing::debug!(
        processor = name,
        actions = config.attributes.len(),
        "resource processor built"
    );
    Ok(Arc::new(ResourceProcessor { actions }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::matching::tests::{batch, span};
    use sextant_otlp_proto::attr;

    #[test]
    fn changes_resource_attributes() {
        let c: Config = serde_json::from_str(
            r#"{"attributes":[
                {"key":"deployment.environment","value":"prod","action":"upsert"},
                {"key":"service.name","value":"other","action":"insert"},
                {"key":"host.name","action":"delete"},
                {"key":"service.namespace","from_attribute":"service.name","action":"insert"}]}"#,
        )
        .unwrap();
        let p = build("resource", &c, &CollectorMetrics::unregistered()).unwrap();
        let mut b = batch("api", vec![span("s", vec![])]);
        b[0].resource
            .as_mut()
            .unwrap()
            .attributes
            .push(attr::kv_str("host.name", "h1"));
        let mut none = batch("x", vec![span("s", vec![])]);
        none[0].resource = None;
        b.extend(none);
        p.process(&mut b);
        let r = &b[0].resource.as_ref().unwrap().attributes;
        assert_eq!(attr::get_str(r, "deployment.environment"), Some("prod"));
        assert_eq!(
            attr::get_str(r, "service.name"),
            Some("api"),
            "insert never overwrites"
        );
        assert_eq!(attr::get_str(r, "service.namespace"), Some("api"));
        assert!(attr::get(r, "host.name").is_none());
        let r2 = &b[1].resource.as_ref().unwrap().attributes;
        assert_eq!(attr::get_str(r2, "deployment.environment"), Some("prod"));
        // span attributes are untouched
        assert!(b[0].scope_spans[0].spans[0].attributes.is_empty());
    }

    #[test]
    fn errors_name_the_attributes_key() {
        let m = CollectorMetrics::unregistered();
        let c: Config =
            serde_json::from_str(r#"{"attributes":[{"key":"a","action":"upsert"}]}"#).unwrap();
        let err = build("resource", &c, &m).err().unwrap();
        assert!(err.starts_with("attributes[0]: one of value"), "{err}");
        let err = build("resource", &Config::default(), &m).err().unwrap();
        assert!(err.starts_with("attributes: at least one"), "{err}");
        assert!(serde_json::from_str::<Config>(r#"{"actions":[]}"#).is_err());
    }
    #[test]
    fn reference_yaml_example() {
        let c: Config = crate::processor::matching::tests::yaml(
            r#"
attributes:
  - key: cloud.availability_zone
    value: "zone-1"
    action: upsert
  - key: k8s.cluster.name
    from_attribute: k8s-cluster
    action: insert
  - key: redundant-attribute
    action: delete
"#,
        )
        .unwrap();
        let p = build("resource", &c, &CollectorMetrics::unregistered()).unwrap();
        let mut b = batch("api", vec![span("s", vec![])]);
        let r = b[0].resource.as_mut().unwrap();
        r.attributes.push(attr::kv_str("k8s-cluster", "c1"));
        r.attributes.push(attr::kv_str("redundant-attribute", "x"));
        p.process(&mut b);
        let r = &b[0].resource.as_ref().unwrap().attributes;
        assert_eq!(attr::get_str(r, "cloud.availability_zone"), Some("zone-1"));
        assert_eq!(attr::get_str(r, "k8s.cluster.name"), Some("c1"));
        assert!(attr::get(r, "redundant-attribute").is_none());
    }
}
