//! Events on `/v2/events`, in Marathon's shapes (every payload carries `eventType` and an ISO
//! `timestamp`). Only types Marathon clients know are ever sent: an unknown `eventType` ends
//! marathon-python's stream.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_type: String,
    /// The JSON payload, already carrying `eventType` and `timestamp`.
    pub data: Value,
}

impl Event {
    /// Builds an event; `data` must be an object (other values are wrapped as `{"value": ..}`).
    pub fn new(event_type: &str, data: Value) -> Self {
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
        Self {
            event_type: event_type.to_string(),
            data: Value::Object(obj),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_type_and_timestamp() {
        let e = Event::new("app_terminated_event", serde_json::json!({"appId": "/a"}));
        assert_eq!(e.data["eventType"], "app_terminated_event");
        assert!(e.data["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(KNOWN_EVENT_TYPES.contains(&"status_update_event"));
    }
}
