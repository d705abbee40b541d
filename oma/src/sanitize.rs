//! Error sanitization for what users see (reference §8): no `virt-v2v`, `VirtIO`, device paths
//! or platform internals; each message comes with a category, a severity and next steps. The
//! unified jobs list holds replication jobs only, so only replication errors are sanitized here.

use serde::Serialize;

use crate::domain::FailureClass;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sanitized {
    pub user_message: String,
    pub category: &'static str,
    pub severity: &'static str,
    pub actionable_steps: Vec<String>,
}

fn s(user_message: &str, category: &'static str, severity: &'static str, steps: &[&str]) -> Sanitized {
    Sanitized {
        user_message: user_message.to_string(),
        category,
        severity,
        actionable_steps: steps.iter().map(|x| x.to_string()).collect(),
    }
}

fn has(text: &str, words: &[&str]) -> bool {
    words.iter().any(|w| text.contains(w))
}

/// A replication job's error, for the unified jobs list. The original returned it unchanged.
pub fn sanitize_replication_error(raw: &str, class: Option<FailureClass>) -> Sanitized {
    match class {
        Some(FailureClass::VmaUnreachableTimeout) => {
            return s(
                "Cannot connect to source environment - replication could not be tracked",
                "connectivity",
                "error",
                &["Check that the source appliance is running and reachable", "Start the replication again"],
            )
        }
        Some(FailureClass::JobLost) => {
            return s(
                "Replication was interrupted and could not be resumed",
                "platform",
                "error",
                &["Start the replication again", "Contact an administrator if this repeats"],
            )
        }
        Some(FailureClass::VmaStalled) => {
            return s(
                "Replication stopped making progress",
                "platform",
                "error",
                &["Check the source appliance", "Start the replication again"],
            )
        }
        _ => {}
    }
    let lower = raw.to_lowercase();
    if has(&lower, &["virt-v2v", "v2v", "virtio"]) {
        s(
            "Driver preparation failed - VM may not be compatible with automated conversion",
            "compatibility",
            "error",
            &["Consider a live failover instead", "Contact an administrator"],
        )
    } else if lower.contains("/dev/") || has(&lower, &["nbd", "device"]) {
        s("Storage access error during replication", "storage", "error", &["Try again", "Contact an administrator"])
    } else if has(&lower, &["timeout", "unreachable", "connection"]) {
        s(
            "Cannot connect to source environment",
            "connectivity",
            "error",
            &["Check connectivity to the source appliance", "Try again"],
        )
    } else if has(&lower, &["permission", "denied", "credential"]) {
        s(
            "Insufficient permissions on the source environment",
            "configuration",
            "error",
            &["Verify the credentials", "Try again"],
        )
    } else if has(&lower, &["snapshot"]) {
        s("Source snapshot operation failed", "storage", "error", &["Check the source VM's snapshots", "Try again"])
    } else {
        s("Replication failed", "platform", "error", &["Try again", "Contact an administrator if this repeats"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_clean(text: &str) {
        let lower = text.to_lowercase();
        for word in ["virt-v2v", "virtio", "/dev/", "cloudstack", "volume daemon"] {
            assert!(!lower.contains(word), "{text:?} contains {word}");
        }
    }

    #[test]
    fn each_kind_of_error_gets_its_category_and_a_message_free_of_technical_words() {
        let table = [
            ("virt-v2v failed with exit code 1", "compatibility", "Driver preparation failed"),
            ("VirtIO drivers not found in /usr/share/virtio-win", "compatibility", "Driver preparation failed"),
            ("failed to open /dev/nbd3: permission denied", "storage", "Storage access error"),
            ("NBD export vanished", "storage", "Storage access error"),
            ("device busy", "storage", "Storage access error"),
            ("read timeout after 30s", "connectivity", "Cannot connect to source environment"),
            ("host unreachable", "connectivity", "Cannot connect to source environment"),
            ("Connection reset by peer", "connectivity", "Cannot connect to source environment"),
            ("Permission denied for user", "configuration", "Insufficient permissions"),
            ("bad credential", "configuration", "Insufficient permissions"),
            ("snapshot removal failed", "storage", "Source snapshot operation failed"),
            ("volume daemon timeout", "connectivity", "Cannot connect to source environment"),
            ("CloudStack API error 530", "platform", "Replication failed"),
            ("something else broke", "platform", "Replication failed"),
        ];
        for (raw, category, message) in table {
            let clean = sanitize_replication_error(raw, None);
            assert_eq!(clean.category, category, "{raw}");
            assert!(clean.user_message.starts_with(message), "{raw}: {}", clean.user_message);
            assert!(!clean.actionable_steps.is_empty(), "{raw}");
            assert_clean(&clean.user_message);
        }
    }

    #[test]
    fn recovery_classes_get_their_own_messages() {
        let stalled = sanitize_replication_error("Replication stalled: no progress", Some(FailureClass::VmaStalled));
        assert_eq!(stalled.user_message, "Replication stopped making progress");
        // A class without a message of its own falls back to the wording of the raw error.
        let rejected = sanitize_replication_error("connection refused", Some(FailureClass::ReplicateRejected));
        assert_eq!(rejected.category, "connectivity");
        let lost = sanitize_replication_error("Job lost on VMA", Some(FailureClass::JobLost));
        assert_eq!(lost.user_message, "Replication was interrupted and could not be resumed");
        let gone = sanitize_replication_error("VMA unreachable", Some(FailureClass::VmaUnreachableTimeout));
        assert_eq!(gone.category, "connectivity");
        assert!(gone.user_message.ends_with("could not be tracked"), "{}", gone.user_message);
    }
}
