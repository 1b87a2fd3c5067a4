//! Pure virtual -> host name translation.
//!
//! Every namespaced object of every virtual namespace (of possibly several vclusters) lands in
//! ONE host namespace, so its host name must be:
//! - deterministic (same input, same name: no state, no clock, no randomness);
//! - a valid DNS-1123 label of at most 63 characters, so it is valid for every namespaced kind
//!   (pods, services, configmaps, secrets, PVCs, endpoints, ...);
//! - readable: it starts with the (sanitised) virtual name, then the virtual namespace;
//! - injective: the classic `<name>-x-<ns>-x-<vc>` is not (name `a-x-b` in namespace `c` and
//!   name `a` in namespace `b-x-c` collide), so we ALWAYS append [`short_hash`] of the
//!   unambiguous tuple `(vcluster, namespace, name)`. Two different tuples then only collide if
//!   their truncated readable parts AND their 40-bit hashes are equal.
//!
//! Format: `<name>-<namespace>-<hash10>`, e.g. `("demo", "default", "web-0")` ->
//! `web-0-default-<10 hex>`; the readable part is cut to 52 characters and stripped of
//! leading/trailing `-`, so the total never exceeds 63 and `-` never doubles before the hash.

use sha2::{Digest, Sha256};

/// Maximum length of a DNS-1123 label and of a label value.
const MAX_LABEL_LEN: usize = 63;
/// Number of lowercase hex characters produced by [`short_hash`].
const HASH_LEN: usize = 10;
/// Room left for the readable part: `<readable>-<hash10>` fits in 63 characters.
const READABLE_BUDGET: usize = MAX_LABEL_LEN - 1 - HASH_LEN;
/// Readable part used when the inputs leave nothing readable (never for valid Kubernetes names).
const FALLBACK_READABLE: &str = "vnest";
/// Infix of [`token_secret_name`].
const TOKEN_SECRET_INFIX: &str = "-token-";
/// Prefix of host names of cluster-scoped objects.
const CLUSTER_SCOPED_PREFIX: &str = "vnest";

/// Host name of the namespaced virtual object `namespace/name` of vcluster `vcluster`.
///
/// Rule: `<sanitised name>-<sanitised namespace>` cut to 52 characters and trimmed of `-`,
/// then `-` and [`short_hash`]`(&[vcluster, namespace, name])`. The result is a DNS-1123 label
/// of at most 63 characters that starts with (a prefix of) the sanitised name, so a virtual
/// Service name (DNS-1035: starts with a letter) yields a host name that starts with a letter.
/// Sanitising maps `.` (and any other character outside `[a-z0-9-]`) to `-` and lowercases.
pub fn host_name(vcluster: &str, namespace: &str, name: &str) -> String {
    let readable = format!("{}-{}", sanitize(name), sanitize(namespace));
    with_hash(&readable, &short_hash(&[vcluster, namespace, name]))
}

/// Host name of the cluster-scoped virtual object `name` of vcluster `vcluster` running in
/// host namespace `host_namespace` (cluster-scoped host objects are shared by every vcluster
/// of every host namespace).
///
/// Rule: `vnest-<sanitised name>-<sanitised vcluster>` cut to 52 characters and trimmed of `-`,
/// then `-` and [`short_hash`]`(&[host_namespace, vcluster, name])`; a DNS-1123 label of at
/// most 63 characters that always starts with `vnest-`.
pub fn host_name_for_cluster_scoped(vcluster: &str, host_namespace: &str, name: &str) -> String {
    let readable = format!(
        "{CLUSTER_SCOPED_PREFIX}-{}-{}",
        sanitize(name),
        sanitize(vcluster)
    );
    with_hash(&readable, &short_hash(&[host_namespace, vcluster, name]))
}

/// Name of the host Secret holding the ServiceAccount token(s) of virtual pod
/// `namespace/pod_name` of vcluster `vcluster`.
///
/// Rule: `<readable>-token-<short_hash(&[vcluster, namespace, pod_name, "sa-token"])>` where
/// `<readable>` is the pod name lowercased with every character outside `[a-z0-9-]` mapped to
/// `-`, cut to 46 characters and trimmed of `-` (`vnest` when nothing is left). At most 63
/// characters, a DNS-1123 label. It never equals a [`host_name`] of a tenant object except by a
/// hash collision: tenant names hash a 3-part tuple, this hashes 4 parts.
pub fn token_secret_name(vcluster: &str, namespace: &str, pod_name: &str) -> String {
    let budget = MAX_LABEL_LEN - TOKEN_SECRET_INFIX.len() - HASH_LEN;
    let cut: String = sanitize(pod_name).chars().take(budget).collect();
    let trimmed = cut.trim_matches('-');
    let readable = if trimmed.is_empty() {
        FALLBACK_READABLE
    } else {
        trimmed
    };
    let hash = short_hash(&[vcluster, namespace, pod_name, "sa-token"]);
    format!("{readable}{TOKEN_SECRET_INFIX}{hash}")
}

/// The virtual name behind `host`, if `host` is the [`host_name`] of an object of virtual
/// namespace `namespace` of vcluster `vcluster` whose readable part was not cut and whose name
/// needed no sanitising (checked by recomputing the name: never a guess).
pub fn virtual_name_in(vcluster: &str, namespace: &str, host: &str) -> Option<String> {
    let (readable, hash) = host.rsplit_once('-')?;
    if hash.len() != HASH_LEN {
        return None;
    }
    let name = readable.strip_suffix(&format!("-{}", sanitize(namespace)))?;
    (!name.is_empty() && host_name(vcluster, namespace, name) == host).then(|| name.to_owned())
}

/// Whether `s` has the shape of a host name vnest makes (any vcluster, any kind):
/// `<readable>-<10 lowercase hex>`, a DNS-1123 label. Used to redact host names in text shown
/// to tenants when they cannot be mapped back.
pub fn looks_like_host_name(s: &str) -> bool {
    let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    is_dns1123_label(s)
        && s.len() > HASH_LEN + 1
        && s.rsplit_once('-').is_some_and(|(head, hash)| {
            !head.is_empty() && hash.len() == HASH_LEN && hash.chars().all(is_hex)
        })
}

/// First 10 lowercase hex characters of SHA-256 over `parts` joined by `'\0'`.
///
/// `'\0'` cannot appear in Kubernetes names, namespaces or label keys, so the joined string is
/// unambiguous: different tuples hash different inputs (`["a-x", "b"]` != `["a", "x-b"]`).
pub fn short_hash(parts: &[&str]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0u8]);
        }
        hasher.update(part.as_bytes());
    }
    // Hex of the first bytes, without a formatter per byte (this runs for every object a
    // resync looks at).
    hasher
        .finalize()
        .iter()
        .flat_map(|byte| [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0x0f)]])
        .take(HASH_LEN)
        .map(char::from)
        .collect()
}

/// True iff `s` is a DNS-1123 label: 1 to 63 characters of `[a-z0-9-]`, starting and ending
/// with an alphanumeric character.
pub fn is_dns1123_label(s: &str) -> bool {
    let is_label_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let is_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=MAX_LABEL_LEN).contains(&s.len())
        && s.chars().all(is_label_char)
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum)
}

/// A DNS-1123 label: 1-63 lowercase alphanumerics or '-', starting and ending alphanumeric.
pub fn parse_dns_label(s: &str) -> Result<String, String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !s.is_empty() && s.len() <= 63 && ok_chars && ok_ends {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a DNS label: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

/// True iff `s` is a valid label value: empty, or at most 63 characters of
/// `[A-Za-z0-9._-]` starting and ending with an alphanumeric character.
pub fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    s.len() <= MAX_LABEL_LEN
        && s.chars().all(is_label_value_char)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `s` made into a valid label value.
///
/// Rule: a valid label value (see [`is_label_value`]) is returned verbatim. Anything else
/// (too long, or with characters a label value cannot hold) becomes
/// `<readable>-<short_hash(&[s])>`, where `<readable>` is `s` with invalid characters replaced
/// by `-`, cut to 52 characters and trimmed to start and end alphanumeric (the bare hash when
/// nothing readable is left). Deterministic, and distinct invalid inputs map to distinct
/// values up to hash collisions.
pub fn safe_label_value(s: &str) -> String {
    if is_label_value(s) {
        return s.to_owned();
    }
    let cleaned: String = s
        .chars()
        .map(|c| if is_label_value_char(c) { c } else { '-' })
        .take(READABLE_BUDGET)
        .collect();
    let readable = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = short_hash(&[s]);
    if readable.is_empty() {
        hash
    } else {
        format!("{readable}-{hash}")
    }
}

/// Characters allowed inside a label value.
fn is_label_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Lowercases and maps every character outside `[a-z0-9-]` (notably `.`) to `-`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `<readable cut to the budget, trimmed of '-'>-<hash>`.
fn with_hash(readable: &str, hash: &str) -> String {
    let cut: String = readable.chars().take(READABLE_BUDGET).collect();
    let trimmed = cut.trim_matches('-');
    let head = if trimmed.is_empty() {
        FALLBACK_READABLE
    } else {
        trimmed
    };
    format!("{head}-{hash}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn is_hex10(s: &str) -> bool {
        s.len() == HASH_LEN && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    }

    /// Splits a host name into (readable part, hash) at the last '-'.
    fn split(host: &str) -> (&str, &str) {
        host.rsplit_once('-').unwrap()
    }

    #[rstest]
    #[case::simple("demo", "default", "web-0", "web-0-default")]
    #[case::dotted_name("demo", "kube-system", "coredns.conf", "coredns-conf-kube-system")]
    #[case::many_dots("vc", "ns", "a.b.c.d", "a-b-c-d-ns")]
    #[case::long_namespace_is_cut(
        "vc",
        "n123456789012345678901234567890123456789012345678901234567890ab",
        "web",
        "web-n12345678901234567890123456789012345678901234567"
    )]
    #[case::cut_ending_in_dash_is_trimmed(
        "vc",
        "ns",
        "a12345678901234567890123456789012345678901234567890-b",
        "a12345678901234567890123456789012345678901234567890"
    )]
    #[case::cut_ending_in_dot_is_trimmed(
        "vc",
        "ns",
        "a12345678901234567890123456789012345678901234567890.b",
        "a12345678901234567890123456789012345678901234567890"
    )]
    #[case::cut_at_separator_is_trimmed(
        "vc",
        "ns",
        "a123456789012345678901234567890123456789012345678901",
        "a123456789012345678901234567890123456789012345678901"
    )]
    fn host_name_examples(#[case] vc: &str, #[case] ns: &str, #[case] name: &str, #[case] readable: &str) {
        let host = host_name(vc, ns, name);
        let (head, hash) = split(&host);
        assert_eq!(head, readable);
        assert!(is_hex10(hash), "{host}");
        assert_eq!(hash, short_hash(&[vc, ns, name]));
        assert!(is_dns1123_label(&host), "{host}");
    }

    #[test]
    fn host_names_map_back_to_virtual_names_when_they_can() {
        for name in ["web-0", "a-x-b", "db", "x-default"] {
            let host = host_name("vc", "default", name);
            assert_eq!(
                virtual_name_in("vc", "default", &host).as_deref(),
                Some(name),
                "{host}"
            );
            assert!(looks_like_host_name(&host));
            assert_eq!(
                virtual_name_in("other", "default", &host),
                None,
                "another vcluster's"
            );
            assert_eq!(
                virtual_name_in("vc", "kube-system", &host),
                None,
                "another namespace's"
            );
        }
        // Sanitised or cut names cannot be recovered (their host names are redacted instead).
        let dotted = host_name("vc", "default", "a.b");
        assert_eq!(virtual_name_in("vc", "default", &dotted), None);
        assert!(looks_like_host_name(&dotted));
        let long = "n".repeat(80);
        assert_eq!(
            virtual_name_in("vc", "default", &host_name("vc", "default", &long)),
            None
        );
        for plain in ["web-0", "default", "deadbeef00", "x-deadbeef0", "web-DEADBEEF00"] {
            assert!(!looks_like_host_name(plain), "{plain}");
        }
        assert!(looks_like_host_name("x-deadbeef00"));
    }

    #[test]
    fn host_name_of_253_char_name() {
        let label = "a".repeat(63);
        let name = [label.as_str(); 4]
            .join(".")
            .chars()
            .take(253)
            .collect::<String>();
        assert_eq!(name.len(), 253);
        let host = host_name("vc", "default", &name);
        assert_eq!(host.len(), 63);
        assert!(is_dns1123_label(&host));
        assert_eq!(split(&host).0, "a".repeat(52));
    }

    #[test]
    fn classic_separator_shift_does_not_collide() {
        assert_ne!(host_name("vc", "c", "a-x-b"), host_name("vc", "b-x-c", "a"));
        assert_ne!(host_name("vc", "b-c", "a"), host_name("vc", "c", "a-b"));
        assert_ne!(host_name("vc", "b", "a.c"), host_name("vc", "c", "a-b"));
    }

    #[test]
    fn host_name_is_readable_and_stable() {
        let host = host_name("demo", "default", "web-0");
        assert!(host.starts_with("web-0-default-"));
        assert_eq!(host, host_name("demo", "default", "web-0"));
        assert_eq!(host.len(), "web-0-default-".len() + HASH_LEN);
    }

    #[rstest]
    #[case::simple("demo", "host-ns", "fast-ssd", "vnest-fast-ssd-demo")]
    #[case::dotted("demo", "host-ns", "example.com", "vnest-example-com-demo")]
    fn cluster_scoped_examples(
        #[case] vc: &str,
        #[case] host_ns: &str,
        #[case] name: &str,
        #[case] readable: &str,
    ) {
        let host = host_name_for_cluster_scoped(vc, host_ns, name);
        let (head, hash) = split(&host);
        assert_eq!(head, readable);
        assert_eq!(hash, short_hash(&[host_ns, vc, name]));
        assert!(is_dns1123_label(&host));
    }

    #[test]
    fn cluster_scoped_differs_per_host_namespace_and_vcluster() {
        let a = host_name_for_cluster_scoped("demo", "ns-a", "x");
        assert_ne!(a, host_name_for_cluster_scoped("demo", "ns-b", "x"));
        assert_ne!(a, host_name_for_cluster_scoped("other", "ns-a", "x"));
        let long = host_name_for_cluster_scoped("demo", "ns", &"a".repeat(253));
        assert_eq!(long.len(), 63);
        assert!(long.starts_with("vnest-a"));
    }

    #[rstest]
    #[case::simple("ns", "web-0")]
    #[case::dotted("ns", "web.v1.example.com")]
    #[case::long("ns", &"a".repeat(253))]
    #[case::long_dotted("kube-system", &format!("{}.{}", "b".repeat(45), "c".repeat(100)))]
    #[case::uppercase_junk("ns", "--WEB--")]
    fn token_secret_name_is_a_short_distinct_label(#[case] ns: &str, #[case] pod: &str) {
        let name = token_secret_name("demo", ns, pod);
        assert!(name.len() <= 63, "{name}");
        assert!(is_dns1123_label(&name), "{name}");
        assert_ne!(name, host_name("demo", ns, pod));
        assert_ne!(name, token_secret_name("other", ns, pod));
        assert_ne!(name, token_secret_name("demo", "other-ns", pod));
        assert_eq!(name, token_secret_name("demo", ns, pod));
        assert!(name.contains("-token-"));
    }

    #[test]
    fn token_secret_name_cannot_be_forged_by_a_tenant_name() {
        // A tenant Secret whose readable host name looks the same hashes a different tuple.
        let ours = token_secret_name("demo", "token", "web");
        let tenant = host_name("demo", "token", "web");
        assert!(ours.starts_with("web-token-") && tenant.starts_with("web-token-"));
        assert_ne!(ours, tenant);
        assert_eq!(
            ours,
            format!("web-token-{}", short_hash(&["demo", "token", "web", "sa-token"]))
        );
    }

    #[test]
    fn dns_labels() {
        assert!(parse_dns_label("a").is_ok());
        assert!(parse_dns_label(&"a".repeat(63)).is_ok());
        for bad in ["", "-a", "a-", "a.b", "A", &"a".repeat(64)] {
            assert!(parse_dns_label(bad).is_err(), "{bad:?}");
        }
    }

    #[rstest]
    #[case::plain("web-0", "web-0-token-2fe7dd57e7")]
    #[case::upper_dotted("Web.V1.Example", "web-v1-example-token-ac0ed79534")]
    #[case::cut_to_46(&"a".repeat(60), &format!("{}-token-5631439f42", "a".repeat(46)))]
    #[case::nothing_readable("--", "vnest-token-795c842e84")]
    #[case::non_ascii("\u{e9}-x", "x-token-78d4fd679f")]
    fn token_secret_name_known_values(#[case] pod: &str, #[case] want: &str) {
        assert_eq!(token_secret_name("demo", "ns", pod), want);
    }

    #[rstest]
    #[case::joined_by_nul(&["a-x", "b"], &["a", "x-b"])]
    #[case::order_matters(&["a", "b"], &["b", "a"])]
    #[case::arity_matters(&["a", ""], &["a"])]
    fn short_hash_is_unambiguous(#[case] left: &[&str], #[case] right: &[&str]) {
        assert_ne!(short_hash(left), short_hash(right));
        assert!(is_hex10(&short_hash(left)));
    }

    #[test]
    fn short_hash_known_value() {
        // sha256("a\0b") starts with these 10 hex characters.
        let expected: String = Sha256::digest(b"a\0b")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..10]
            .to_owned();
        assert_eq!(short_hash(&["a", "b"]), expected);
    }

    #[rstest]
    #[case("a", true)]
    #[case("web-0", true)]
    #[case("0abc", true)]
    #[case(&"a".repeat(63), true)]
    #[case(&"a".repeat(64), false)]
    #[case("", false)]
    #[case("-a", false)]
    #[case("a-", false)]
    #[case("A", false)]
    #[case("a.b", false)]
    #[case("a_b", false)]
    fn dns1123_label_examples(#[case] s: &str, #[case] valid: bool) {
        assert_eq!(is_dns1123_label(s), valid, "{s:?}");
    }

    #[rstest]
    #[case::empty("", "")]
    #[case::plain("demo", "demo")]
    #[case::mixed("My_App.v1-2", "My_App.v1-2")]
    #[case::max_len(&"a".repeat(63), &"a".repeat(63))]
    fn safe_label_value_keeps_valid_values(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(safe_label_value(input), expected);
    }

    #[rstest]
    #[case::too_long(&"a".repeat(64), &"a".repeat(52))]
    #[case::slash("team/app", "team-app")]
    #[case::leading_dash("-app", "app")]
    #[case::trailing_dot("app.", "app")]
    #[case::only_invalid("///", "")]
    #[case::cut_before_dot(&format!("{}.{}", "a".repeat(51), "b".repeat(30)), &"a".repeat(51))]
    fn safe_label_value_hashes_invalid_values(#[case] input: &str, #[case] readable: &str) {
        let out = safe_label_value(input);
        assert!(is_label_value(&out), "{out}");
        assert!(out.len() <= MAX_LABEL_LEN);
        let hash = short_hash(&[input]);
        if readable.is_empty() {
            assert_eq!(out, hash);
        } else {
            assert_eq!(out, format!("{readable}-{hash}"));
        }
    }

    #[test]
    fn safe_label_value_distinguishes_long_values_with_same_prefix() {
        let a = format!("{}x", "a".repeat(70));
        let b = format!("{}y", "a".repeat(70));
        assert_ne!(safe_label_value(&a), safe_label_value(&b));
    }

    // ---- property tests ----

    const LABEL_RE: &str = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";

    /// A DNS-1123 label.
    fn dns_label() -> impl Strategy<Value = String> {
        prop::string::string_regex(LABEL_RE).unwrap()
    }

    /// A short DNS-1123 label (for building adversarial families that must stay <= 63).
    fn short_label() -> impl Strategy<Value = String> {
        prop::string::string_regex("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?").unwrap()
    }

    /// A DNS-1123 subdomain: dot-joined labels, at most 253 characters.
    fn dns_subdomain() -> impl Strategy<Value = String> {
        prop::collection::vec(dns_label(), 1..6)
            .prop_map(|labels| labels.join("."))
            .prop_filter("subdomain longer than 253", |s| s.len() <= 253)
    }

    /// A DNS-1035 label (Service names): starts with a letter.
    fn dns1035_label() -> impl Strategy<Value = String> {
        prop::string::string_regex("[a-z]([a-z0-9-]{0,61}[a-z0-9])?").unwrap()
    }

    /// A (vcluster, namespace, name) tuple of valid inputs.
    fn tuple() -> impl Strategy<Value = (String, String, String)> {
        (dns_label(), dns_label(), dns_subdomain())
    }

    proptest! {
        #[test]
        fn host_name_is_a_short_readable_deterministic_label((vc, ns, name) in tuple()) {
            let host = host_name(&vc, &ns, &name);
            prop_assert!(host.len() <= MAX_LABEL_LEN);
            prop_assert!(is_dns1123_label(&host), "{host}");
            prop_assert_eq!(&host, &host_name(&vc, &ns, &name));
            let (head, hash) = split(&host);
            prop_assert!(is_hex10(hash));
            // Starts with the first k >= 1 sanitised characters of the name.
            let sanitised = sanitize(&name);
            let k = sanitised.len().min(head.len());
            prop_assert!(k >= 1);
            prop_assert!(head.starts_with(&sanitised[..k]), "{host} vs {sanitised}");
            prop_assert!(!head.ends_with('-') && !head.contains('.'));
        }

        #[test]
        fn host_name_of_service_starts_with_a_letter(
            vc in dns_label(), ns in dns_label(), name in dns1035_label()
        ) {
            let host = host_name(&vc, &ns, &name);
            prop_assert!(host.starts_with(|c: char| c.is_ascii_lowercase()), "{host}");
        }

        #[test]
        fn host_name_is_injective(a in tuple(), b in tuple()) {
            prop_assume!(a != b);
            prop_assert_ne!(host_name(&a.0, &a.1, &a.2), host_name(&b.0, &b.1, &b.2));
        }

        #[test]
        fn host_name_survives_separator_shift(
            vc in dns_label(), a in short_label(), b in short_label(), c in short_label()
        ) {
            let left = host_name(&vc, &c, &format!("{a}-x-{b}"));
            let right = host_name(&vc, &format!("{b}-x-{c}"), &a);
            prop_assert_ne!(left, right);
            let left = host_name(&vc, &c, &format!("{a}-{b}"));
            let right = host_name(&vc, &format!("{b}-{c}"), &a);
            prop_assert_ne!(left, right);
            let left = host_name(&vc, &c, &format!("{a}.{b}"));
            let right = host_name(&vc, &format!("{b}-{c}"), &a);
            prop_assert_ne!(left, right);
        }

        #[test]
        fn same_name_in_two_namespaces_differs(
            vc in dns_label(), ns1 in dns_label(), ns2 in dns_label(), name in dns_subdomain()
        ) {
            prop_assume!(ns1 != ns2);
            prop_assert_ne!(host_name(&vc, &ns1, &name), host_name(&vc, &ns2, &name));
        }

        #[test]
        fn same_object_in_two_vclusters_differs(
            vc1 in dns_label(), vc2 in dns_label(), ns in dns_label(), name in dns_subdomain()
        ) {
            prop_assume!(vc1 != vc2);
            prop_assert_ne!(host_name(&vc1, &ns, &name), host_name(&vc2, &ns, &name));
        }

        #[test]
        fn long_names_sharing_the_readable_prefix_differ(
            vc in dns_label(), ns in dns_label(), prefix in "[a-z]{60}", s1 in dns_label(), s2 in dns_label()
        ) {
            prop_assume!(s1 != s2);
            let one = host_name(&vc, &ns, &format!("{prefix}.{s1}"));
            let two = host_name(&vc, &ns, &format!("{prefix}.{s2}"));
            prop_assert_eq!(split(&one).0, split(&two).0);
            prop_assert_ne!(one, two);
        }

        #[test]
        fn cluster_scoped_is_a_short_label(
            vc in dns_label(), host_ns in dns_label(), name in dns_subdomain()
        ) {
            let host = host_name_for_cluster_scoped(&vc, &host_ns, &name);
            prop_assert!(is_dns1123_label(&host), "{host}");
            prop_assert!(host.starts_with("vnest-"));
        }

        #[test]
        fn safe_label_value_is_always_valid(s in ".{0,100}") {
            let out = safe_label_value(&s);
            prop_assert!(is_label_value(&out), "{out:?}");
            prop_assert_eq!(&out, &safe_label_value(&s));
            if is_label_value(&s) {
                prop_assert_eq!(out, s);
            }
        }
    }
}
