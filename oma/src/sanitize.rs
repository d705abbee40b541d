//! Error sanitization for what users see (reference §8): no `virt-v2v`, `VirtIO`, device paths
//! or platform internals; each message comes with a category, a severity and next steps.

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

/// A failover step's error (reference §8.1 table), routed on the exact step name.
pub fn sanitize_failover_error(step: &str, raw: Option<&str>) -> Sanitized {
    let Some(raw) = raw else {
        return s("Operation completed successfully", "success", "info", &[]);
    };
    let e = raw.to_lowercase();
    match step {
        "virtio-driver-injection" | "driver-injection" => {
            if has(&e, &["virt-v2v", "v2v"]) {
                if has(&e, &["exit code", "failed"]) {
                    s(
                        "Driver injection failed - VM may not be compatible with automated conversion",
                        "compatibility",
                        "error",
                        &["Consider a live failover instead", "Contact an administrator"],
                    )
                } else {
                    s(
                        "Driver injection process error - automated tool encountered issue",
                        "compatibility",
                        "error",
                        &["Try again", "Contact an administrator"],
                    )
                }
            } else if e.contains("virtio") {
                if has(&e, &["not found", "missing"]) {
                    s(
                        "Required driver package not available on system",
                        "configuration",
                        "error",
                        &["Contact an administrator"],
                    )
                } else {
                    s(
                        "KVM driver installation failed - compatibility issue",
                        "compatibility",
                        "error",
                        &["Consider a live failover instead"],
                    )
                }
            } else if has(&e, &["/dev/", "device"]) {
                s("Storage access error during driver preparation", "storage", "error", &["Try again"])
            } else if has(&e, &["permission", "denied"]) {
                s(
                    "System permissions error during driver preparation",
                    "configuration",
                    "error",
                    &["Contact an administrator"],
                )
            } else {
                s(
                    "Driver preparation failed - unable to inject required drivers",
                    "compatibility",
                    "error",
                    &["Contact an administrator"],
                )
            }
        }
        "vm-creation" | "destination-vm-creation" => {
            if e.contains("network") {
                if e.contains("not found") {
                    s(
                        "Network configuration error - specified network not available",
                        "network",
                        "error",
                        &["Verify the network mapping"],
                    )
                } else {
                    s(
                        "Network configuration error during VM creation",
                        "network",
                        "error",
                        &["Verify the network mapping"],
                    )
                }
            } else if has(&e, &["insufficient", "quota", "capacity"]) {
                s(
                    "Insufficient resources on destination platform",
                    "platform",
                    "error",
                    &["Free resources on the destination", "Try again"],
                )
            } else if has(&e, &["template", "offering"]) {
                s(
                    "Platform configuration error - VM template or service offering issue",
                    "configuration",
                    "error",
                    &["Contact an administrator"],
                )
            } else if has(&e, &["api", "cloudstack"]) {
                s("Platform communication error - could not create VM", "platform", "error", &["Try again"])
            } else {
                s("VM creation failed on destination platform", "platform", "error", &["Try again"])
            }
        }
        "network-configuration" | "network-mapping" => {
            if e.contains("not found") {
                s(
                    "Network not found - target network is not available",
                    "network",
                    "error",
                    &["Verify the network mapping"],
                )
            } else if has(&e, &["mapping", "not mapped"]) {
                s(
                    "Network mapping not configured for this VM",
                    "configuration",
                    "error",
                    &["Configure the network mapping"],
                )
            } else if has(&e, &["network id", "networkid"]) {
                s(
                    "Network configuration error - cannot resolve network identifier",
                    "configuration",
                    "error",
                    &["Verify the network mapping"],
                )
            } else {
                s("Network configuration error during failover", "network", "error", &["Verify the network mapping"])
            }
        }
        "volume-attachment" | "volume-operations" | "volume-detachment" => {
            if has(&e, &["already attached", "is attached"]) {
                s("Storage volume is already in use", "storage", "error", &["Try again"])
            } else if has(&e, &["not found", "does not exist"]) {
                s("Storage volume not found", "storage", "error", &["Contact an administrator"])
            } else if e.contains("detach") {
                s("Storage detachment error - volume cannot be disconnected", "storage", "error", &["Try again"])
            } else if has(&e, &["volume daemon", "daemon"]) {
                s("Storage management service error", "platform", "error", &["Contact an administrator"])
            } else {
                s("Storage operation failed", "storage", "error", &["Try again"])
            }
        }
        "source-vm-power-off" | "source-vm-power-on" | "vm-startup-and-validation" => {
            if e.contains("vma") && has(&e, &["unreachable", "connection", "timeout"]) {
                s(
                    "Cannot connect to source environment",
                    "connectivity",
                    "error",
                    &["Check connectivity to the source appliance"],
                )
            } else if has(&e, &["not found", "does not exist"]) {
                s("Source VM not found", "configuration", "error", &["Verify the source VM"])
            } else if has(&e, &["power", "already"]) {
                s(
                    "VM power state change failed - VM may already be in requested state",
                    "platform",
                    "warning",
                    &["Check the VM's power state"],
                )
            } else if has(&e, &["permission", "credential"]) {
                s(
                    "Insufficient permissions to manage VM power state",
                    "configuration",
                    "error",
                    &["Verify the credentials"],
                )
            } else {
                s("VM power management operation failed", "platform", "error", &["Try again"])
            }
        }
        "cloudstack-snapshot-creation" | "multi-volume-snapshot-creation" => {
            if has(&e, &["create", "creation"]) {
                s("Backup snapshot creation failed", "storage", "error", &["Try again"])
            } else if e.contains("not found") {
                s("Backup snapshot not found", "storage", "error", &["Contact an administrator"])
            } else if has(&e, &["revert", "rollback"]) {
                s(
                    "Snapshot rollback failed - cannot restore to previous state",
                    "storage",
                    "critical",
                    &["Contact an administrator"],
                )
            } else {
                s("Backup snapshot operation failed", "storage", "error", &["Try again"])
            }
        }
        "validation" | "pre-flight-validation" => {
            let steps = &["Review the VM's readiness"];
            if has(&e, &["replication", "not replicated"]) {
                s("VM is not ready for failover - replication required first", "configuration", "warning", steps)
            } else if e.contains("network") && e.contains("mapping") {
                s("Network mapping not configured - required for failover", "configuration", "warning", steps)
            } else if has(&e, &["state", "status"]) {
                s("VM is not in valid state for this operation", "configuration", "warning", steps)
            } else {
                s("Pre-flight validation failed - VM not ready for operation", "configuration", "warning", steps)
            }
        }
        other => {
            let category = if e.contains("timeout") {
                "connectivity"
            } else if e.contains("not found") || has(&e, &["permission", "denied"]) {
                "configuration"
            } else {
                "unknown"
            };
            let friendly = title_case(other);
            let message = if friendly == other { "Operation failed".to_string() } else { format!("{friendly} failed") };
            Sanitized { user_message: message, category, severity: "error", actionable_steps: vec!["Try again".into()] }
        }
    }
}

/// `foo-bar` → `Foo Bar`.
fn title_case(step: &str) -> String {
    step.split('-')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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
    fn technical_words_never_reach_users() {
        let raws = [
            "virt-v2v failed with exit code 1",
            "VirtIO drivers not found in /usr/share/virtio-win",
            "failed to open /dev/nbd3: permission denied",
            "CloudStack API error 530",
            "volume daemon timeout",
        ];
        for raw in raws {
            assert_clean(&sanitize_replication_error(raw, None).user_message);
            for step in ["virtio-driver-injection", "vm-creation", "volume-attachment", "unknown-step"] {
                assert_clean(&sanitize_failover_error(step, Some(raw)).user_message);
            }
        }
    }

    #[test]
    fn failover_rules_follow_the_reference_table() {
        assert_eq!(
            sanitize_failover_error("virtio-driver-injection", Some("virt-v2v exit code 1")).user_message,
            "Driver injection failed - VM may not be compatible with automated conversion"
        );
        let snap = sanitize_failover_error("cloudstack-snapshot-creation", Some("rollback refused"));
        assert_eq!(snap.severity, "critical");
        assert_eq!(sanitize_failover_error("foo-bar", Some("boom")).user_message, "Foo Bar failed");
        assert_eq!(sanitize_failover_error("x", None).category, "success");
    }

    #[test]
    fn recovery_classes_get_their_own_messages() {
        let lost = sanitize_replication_error("Job lost on VMA", Some(FailureClass::JobLost));
        assert_eq!(lost.user_message, "Replication was interrupted and could not be resumed");
        let gone = sanitize_replication_error("VMA unreachable", Some(FailureClass::VmaUnreachableTimeout));
        assert_eq!(gone.category, "connectivity");
    }
}
