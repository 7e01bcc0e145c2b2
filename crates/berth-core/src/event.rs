//! Events on `/v2/events`, in Marathon's shapes (every payload carries `eventType` and an ISO
//! `timestamp`). Only types Marathon clients know are ever sent: an unknown `eventType` ends
//! marathon-python's stream.

use serde_json::Value;
use std::sync::Arc;

pub const KNOWN_EVENT_TYPES: &[&str] = &[
    "event_stream_attached",
    "event_stream_detached",
    "api_post_event",
    "status_update_event",
    "instance_changed_event",
    "instance_health_changed_event",
    "health_status_changed_event",
    "failed_health_check_event",
    "unhealthy_instance_kill_event",
    "unhealthy_task_kill_event",
    "app_terminated_event",
    "unknown_instance_terminated_event",
    "group_change_success",
    "group_change_failed",
    "deployment_info",
    "deployment_step_success",
    "deployment_step_failure",
    "deployment_success",
    "deployment_failed",
    "framework_message_event",
    "add_health_check_event",
    "remove_health_check_event",
];

/// One event, rendered to its JSON payload once when it is built: every subscriber sends
/// the same bytes, and a payload embedding a large deployment plan is never re-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_type: String,
    /// The JSON payload, already carrying `eventType` and `timestamp`.
    pub json: Arc<str>,
}

impl Event {
    /// Builds an event; `data` must be an object (other values are wrapped as `{"value": ..}`).
    pub fn new(event_type: &str, data: Value) -> Self {
        Self::render(event_type, data, None)
    }

    /// Builds an event whose `plan` field is `plan`, JSON text rendered earlier (a
    /// deployment's plan is rendered once and shared by all its events).
    pub fn with_plan(event_type: &str, data: Value, plan: &str) -> Self {
        Self::render(event_type, data, Some(plan))
    }

    fn render(event_type: &str, data: Value, plan: Option<&str>) -> Self {
        let mut obj = match data {
            Value::Object(m) => m,
            other => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        obj.insert("eventType".into(), Value::String(event_type.to_string()));
        obj.entry("timestamp")
            .or_insert_with(|| Value::String(crate::time::now()));
        obj.remove("plan");
        // An object of JSON values always encodes.
        let mut text = Value::Object(obj).to_string();
        if let Some(plan) = plan {
            // `text` ends with the object's closing brace and has at least two fields.
            text.pop();
            text.reserve(plan.len() + 9);
            text.push_str(",\"plan\":");
            text.push_str(plan);
            text.push('}');
        }
        Self {
            event_type: event_type.to_string(),
            json: Arc::from(text),
        }
    }

    /// The payload as a JSON value (tests and tools; the server sends [`Event::json`]).
    pub fn data(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }

    /// Bytes the payload occupies: what an event queue accounts for.
    pub fn size(&self) -> usize {
        self.json.len() + self.event_type.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_type_and_timestamp() {
        let e = Event::new("app_terminated_event", serde_json::json!({"appId": "/a"}));
        assert_eq!(e.data()["eventType"], "app_terminated_event");
        assert!(e.data()["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(KNOWN_EVENT_TYPES.contains(&"status_update_event"));
    }

    #[test]
    fn plan_is_spliced_as_a_field() {
        let plan = r#"{"id":"p1","steps":[]}"#;
        let e = Event::with_plan(
            "deployment_success",
            serde_json::json!({"id": "p1", "plan": "ignored"}),
            plan,
        );
        let d = e.data();
        assert_eq!(d["plan"]["id"], "p1");
        assert_eq!(d["id"], "p1");
        assert_eq!(d["eventType"], "deployment_success");
        assert_eq!(e.json.matches("\"plan\"").count(), 1);
    }
}
