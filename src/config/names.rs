//! Kubernetes' rules for the names the flags carry: DNS labels and subdomains (Lease,
//! pod and namespace names), label keys and label values. Each check returns the rule
//! broken, worded for the one-line message that names the flag.

/// RFC 1123 DNS label: at most 63 lowercase alphanumerics or '-', alphanumeric at both ends.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("must be a DNS label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit".into())
    }
}

/// RFC 1123 DNS subdomain: at most 253 characters, dot-separated DNS labels.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err("must be a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit".into())
    }
}

/// Kubernetes qualified name (label or annotation key): `[prefix/]name`, the prefix a DNS
/// subdomain, the name at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        check_dns_subdomain(p).map_err(|rule| format!("label key prefix {rule}"))?;
    }
    if is_name(name) {
        Ok(())
    } else {
        Err("must be a label key [prefix/]name: the name at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into())
    }
}

/// A label value, not empty here: at most 63 characters of `[A-Za-z0-9._-]`,
/// alphanumeric at both ends.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if is_name(value) {
        Ok(())
    } else {
        Err("must be a label value: 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into())
    }
}

/// The name part of a qualified name, or a non-empty label value.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names() {
        for ok in ["is-leader", "a/b", "db.example.com/primary", "x/A_b.c-9"] {
            assert!(check_qualified_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "/x",
            "x/",
            "Example.com/x",
            "a/b/c",
            "-a",
            "a-",
            long.as_str(),
        ] {
            assert!(check_qualified_name(bad).is_err(), "{bad}");
        }
    }
}
