use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libvirt")
}

#[test]
fn nova_calico_instance() {
    let (taps, _) = scan_dir(&fixtures());
    let vm = &taps["tap4f1c2a9e-07"];
    assert_eq!(vm.domain, "instance-0000002a");
    assert_eq!(vm.nova_name.as_deref(), Some("web-frontend-3"));
    assert_eq!(vm.display_name(), "web-frontend-3");
    assert_eq!(
        vm.uuid.as_deref(),
        Some("3b1f8c2e-9d4a-4c61-8f0e-5a7b2c9d1e04")
    );
    assert_eq!(vm.guest_mac, Some("fa:16:3e:aa:bb:cc".parse().unwrap()));
    assert_eq!(
        vm.libvirt_tap_mac(),
        Some("fe:16:3e:aa:bb:cc".parse().unwrap())
    );
    assert_eq!(vm.iface_type, "ethernet");
    assert_eq!(vm.managed, Some(false));
    assert_eq!(vm.bridge, None);
}

#[test]
fn plain_libvirt_bridged_domain() {
    let (taps, _) = scan_dir(&fixtures());
    let vm = &taps["vnet3"];
    assert_eq!(
        (vm.display_name(), vm.nova_name.as_deref()),
        ("build-runner", None)
    );
    assert_eq!(vm.iface_type, "bridge");
    assert_eq!(vm.bridge.as_deref(), Some("br0"));
    assert_eq!(vm.managed, None);
    assert_eq!(taps["vnet4"].bridge.as_deref(), Some("virbr0"));
    assert_eq!(
        taps["vnet4"].guest_mac,
        Some("52:54:00:65:43:21".parse().unwrap())
    );
}

#[test]
fn secrets_are_never_extracted() {
    let (taps, _) = scan_dir(&fixtures());
    let vm = &taps["tap9d8c7b6a-5f"];
    assert_eq!(vm.domain, "legacy-desktop");
    let all = serde_json::to_string(&taps).unwrap();
    assert!(!all.contains("s3cr3t") && !all.contains("vnc-pa55") && !all.contains("passwd"));
}

#[test]
fn bad_files_are_reported_and_skipped() {
    let (taps, errors) = scan_dir(&fixtures());
    assert_eq!(taps.len(), 4);
    let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(msgs.iter().any(|m| m.contains("not-a-domain.xml")));
    assert!(msgs
        .iter()
        .any(|m| m.contains("truncated.xml") && m.contains("not valid XML")));
}

fn status_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libvirt-status")
}

/// Status files written by a real libvirtd 9.0.0: `<domstatus>` around the domain,
/// `<devices>` and `<cpu>` of its own before it.
#[test]
fn real_status_files() {
    let (taps, errors) = scan_dir(&status_fixtures());
    assert!(errors.is_empty(), "{errors:?}");
    let nova = &taps["tap1234abcd-56"];
    assert_eq!(nova.display_name(), "web-1");
    assert_eq!(nova.domain, "instance-0000002b");
    assert_eq!(nova.managed, Some(false));
    assert_eq!(nova.guest_mac, Some("fa:16:3e:aa:bb:cc".parse().unwrap()));
    assert_eq!(nova.migrated_in(), Some(false), "reason='booted'");
    assert_eq!(nova.state.as_deref(), Some("running"));
    assert!(!nova.paused_for_migration());
    // The domain's own <cpu>, not the one libvirt keeps beside it in <domstatus>.
    let cpu = nova.cpu.as_ref().unwrap();
    assert_eq!(
        (cpu.mode.as_deref(), cpu.model.as_deref()),
        (Some("custom"), Some("qemu64"))
    );
    assert_eq!(cpu.features, ["hypervisor", "lahf_lm"]);
    assert_eq!(taps["vnet0"].bridge.as_deref(), Some("brtw0"));
    let managed = &taps["tapmanaged-01"];
    assert_eq!(
        (managed.iface_type.as_str(), managed.managed),
        ("ethernet", None)
    );
    // type='network': the bridge is only under <actual>.
    let net = &taps["vnet1"];
    assert_eq!(net.iface_type, "network");
    assert_eq!(net.bridge.as_deref(), Some("virbrtw0"));
    let all = serde_json::to_string(&taps).unwrap();
    assert!(!all.contains("REDACTED") && !all.contains("passwd"));
}

#[test]
fn migrated_in_from_the_status_reason() {
    let xml = std::fs::read_to_string(status_fixtures().join("instance-0000002b.xml"))
        .unwrap()
        .replace("reason='booted'", "reason='migrated'");
    let ifaces = parse_domain(&xml, Path::new("x.xml")).unwrap();
    assert_eq!(ifaces[0].migrated_in(), Some(true));
    let plain = parse_domain(
        "<domain><name>d</name><devices><interface type='bridge'><target dev='vnet9'/></interface></devices></domain>",
        Path::new("y.xml"),
    )
    .unwrap();
    assert_eq!(
        plain[0].migrated_in(),
        None,
        "a plain domain XML does not say"
    );
}

/// The directory as libvirt changes it: a domain appears after its tap, a tap name is
/// taken over by another domain, a domain is destroyed.
#[test]
fn identities_follow_the_files() {
    let dir = std::env::temp_dir().join(format!("tw-libvirt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, xml: &str| {
        // As libvirt does: a new file renamed into place.
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, xml).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _runtime = rt.enter();
    let (mut d, errors) = LibvirtDir::open(&dir);
    assert!(errors.is_empty() && d.lookup("tap1234abcd-56").is_none());
    let xml = std::fs::read_to_string(status_fixtures().join("instance-0000002b.xml")).unwrap();
    write("instance-0000002b.xml", &xml);
    let wait = |d: &mut LibvirtDir, want: Option<&str>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while d
            .lookup("tap1234abcd-56")
            .map(|v| v.display_name().to_string())
            .as_deref()
            != want
        {
            assert!(
                std::time::Instant::now() < deadline,
                "never became {want:?}"
            );
            rt.block_on(async {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(200), d.changed()).await;
            });
        }
    };
    wait(&mut d, Some("web-1"));
    // The Neutron port (and so the tap name) reused by a new instance.
    std::fs::remove_file(dir.join("instance-0000002b.xml")).unwrap();
    write(
        "instance-0000002c.xml",
        &xml.replace("web-1", "web-2")
            .replace("instance-0000002b", "instance-0000002c"),
    );
    wait(&mut d, Some("web-2"));
    std::fs::remove_file(dir.join("instance-0000002c.xml")).unwrap();
    wait(&mut d, None);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Status files shaped to cost the most for their size: what one might put in
/// /run/libvirt/qemu to stop or starve tapwatch.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Elements nested `n` deep.
    Deep,
    /// One element with `n` attributes.
    Attributes,
    /// `n` nested elements, each declaring a namespace.
    NamespacesDeep,
    /// One element declaring `n` namespaces, with `n` children.
    NamespacesWide,
    /// `n` empty elements.
    Nodes,
    /// `n` entity references in the VM's name.
    Entities,
    /// One attribute `n` bytes long.
    HugeAttribute,
}

fn shaped(shape: Shape, n: usize) -> String {
    let mut body = String::new();
    match shape {
        Shape::Deep => {
            body.push_str(&"<a>".repeat(n));
            body.push_str(&"</a>".repeat(n));
        }
        Shape::Attributes => {
            body.push_str("<a");
            for i in 0..n {
                body.push_str(&format!(" a{i}=''"));
            }
            body.push_str("/>");
        }
        Shape::NamespacesDeep => {
            for i in 0..n {
                body.push_str(&format!("<a xmlns:n{i}='u'>"));
            }
            body.push_str(&"</a>".repeat(n));
        }
        Shape::NamespacesWide => {
            body.push_str("<a");
            for i in 0..n {
                body.push_str(&format!(" xmlns:n{i}='u{i}'"));
            }
            body.push('>');
            body.push_str(&"<b/>".repeat(n));
            body.push_str("</a>");
        }
        Shape::Nodes => body.push_str(&"<a/>".repeat(n)),
        Shape::Entities => {}
        Shape::HugeAttribute => body.push_str(&format!("<a b='{}'/>", "x".repeat(n))),
    }
    let name = match shape {
        Shape::Entities => "&lt;&#x202e;".repeat(n),
        _ => "web-1".into(),
    };
    format!(
        "<domstatus state='running' reason='booted'><domain type='kvm'><name>{name}</name>\
         <metadata>{body}</metadata><devices><interface type='ethernet'>\
         <mac address='fa:16:3e:aa:bb:cc'/><target dev='tap0' managed='no'/></interface>\
         </devices></domain></domstatus>"
    )
}

/// What a parse of foreign text may cost at most, in a test build (unoptimised).
const PARSE_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// Parses `xml` on a thread with the stack the watch loop's threads get at least (a
/// spawned thread's 2 MiB), within [`PARSE_BOUND`].
fn parse_bounded(xml: String) -> Result<Vec<VmInterface>, String> {
    let started = std::time::Instant::now();
    let r = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || parse_domain(&xml, Path::new("x.xml")).map_err(|e| e.to_string()))
        .unwrap()
        .join()
        .expect("the parse panicked");
    assert!(
        started.elapsed() < PARSE_BOUND,
        "took {:?}",
        started.elapsed()
    );
    r
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever its shape and size, a file is read or refused, never a crash, and
    /// within the bound.
    #[test]
    fn adversarial_status_files_are_bounded(
        shape in proptest::sample::select(vec![
            Shape::Deep, Shape::Attributes, Shape::NamespacesDeep, Shape::NamespacesWide,
            Shape::Nodes, Shape::Entities, Shape::HugeAttribute,
        ]),
        n in proptest::prop_oneof![0usize..100, 100usize..5_000, 5_000usize..200_000],
    ) {
        // The shapes sit three levels deep: <domstatus><domain><metadata>.
        let refused = match shape {
            Shape::Deep => n + 3 > MAX_DEPTH,
            Shape::Attributes | Shape::NamespacesWide => n > MAX_ELEMENT_ATTRIBUTES,
            Shape::NamespacesDeep => n + 3 > MAX_DEPTH || n > MAX_NAMESPACES,
            Shape::Nodes | Shape::Entities | Shape::HugeAttribute => false,
        };
        match parse_bounded(shaped(shape, n)) {
            Ok(ifaces) => proptest::prop_assert!(!refused && ifaces.len() == 1),
            Err(e) => proptest::prop_assert!(refused && e.contains("not a libvirt status file"), "{}", e),
        }
    }

    /// A real status file cut anywhere, or with foreign text spliced in anywhere.
    #[test]
    fn damaged_status_files_are_read_or_refused(
        cut in 0usize..12_000,
        at in 0usize..12_000,
        splice in "(<[a-z:]{0,6}( [a-z:]{1,6}='[^']{0,8}')*/?>|</[a-z]{0,6}>|&[a-z#0-9]{0,6};|<!--|<!\\[CDATA\\[|<\\?|\\PC){0,8}",
    ) {
        let xml = std::fs::read_to_string(status_fixtures().join("instance-0000002b.xml")).unwrap();
        let cut_at = xml.floor_char_boundary(cut.min(xml.len()));
        let _ = parse_bounded(xml[..cut_at].to_string());
        let at = xml.floor_char_boundary(at.min(xml.len()));
        let spliced = format!("{}{splice}{}", &xml[..at], &xml[at..]);
        let _ = parse_bounded(spliced);
    }

    /// The limits count what the parser will see, not what only looks like it: tags
    /// in comments, CDATA, processing instructions and attribute values count nothing,
    /// so a file within the limits is never refused.
    #[test]
    fn only_real_markup_counts(
        steps in proptest::collection::vec(0u8..6, 0..300),
    ) {
        // Enough to pass every limit if it were counted.
        let decoy = "<a b='' c='' d=''>".repeat(MAX_DEPTH + 1);
        let mut body = String::new();
        let mut open = 0;
        for step in steps {
            match step {
                0 if open < MAX_DEPTH - 4 => {
                    body.push_str("<e x='>' y=\"/>'\" z='&lt;!--'>");
                    open += 1;
                }
                1 if open > 0 => {
                    body.push_str("</e >");
                    open -= 1;
                }
                2 => body.push_str(&format!("<!-- {decoy} -->")),
                3 => body.push_str(&format!("<![CDATA[{decoy}]]>")),
                4 => body.push_str(&format!("<?pi {decoy}?>")),
                _ => body.push_str("<f\n  g = \"xmlns:n='u'\" />text &gt; more"),
            }
        }
        body.push_str(&"</e>".repeat(open));
        let xml = shaped(Shape::Nodes, 0).replace("<metadata>", &format!("<metadata>{body}"));
        let ifaces = parse_bounded(xml).map_err(proptest::test_runner::TestCaseError::fail)?;
        proptest::prop_assert_eq!(ifaces.len(), 1);
    }

    /// Any text at all.
    #[test]
    fn any_text_is_read_or_refused(xml in "\\PC{0,400}|[<>/='\"&;a-z: ]{0,400}") {
        let _ = parse_bounded(xml);
    }
}

/// Each limit holds to the unit: at it a file is read, past it refused, saying which.
#[test]
fn limits_are_exact() {
    let refused = |xml: String, limit: Limit| match parse_domain(&xml, Path::new("x.xml")) {
        Err(LibvirtError::Refused { limit: l, .. }) => assert_eq!(l, limit),
        other => panic!("{limit:?}: {other:?}"),
    };
    let read = |xml: String| {
        let ifaces = parse_domain(&xml, Path::new("x.xml")).unwrap();
        assert_eq!(ifaces[0].tap, "tap0");
    };
    read(shaped(Shape::Deep, MAX_DEPTH - 3));
    refused(shaped(Shape::Deep, MAX_DEPTH - 2), Limit::Depth);
    read(shaped(Shape::Attributes, MAX_ELEMENT_ATTRIBUTES));
    refused(
        shaped(Shape::Attributes, MAX_ELEMENT_ATTRIBUTES + 1),
        Limit::ElementAttributes,
    );
    read(shaped(Shape::NamespacesWide, MAX_NAMESPACES));
    refused(
        shaped(Shape::NamespacesWide, MAX_NAMESPACES + 1),
        Limit::ElementAttributes,
    );
    // Namespaces declared one per element, across the file.
    let ns = |n: usize| {
        let body: String = (0..n).map(|i| format!("<a xmlns:n{i}='u'/>")).collect();
        shaped(Shape::Nodes, 0).replace("<metadata>", &format!("<metadata>{body}"))
    };
    read(ns(MAX_NAMESPACES));
    refused(ns(MAX_NAMESPACES + 1), Limit::Namespaces);
    // The parser's reservations: a node per '<' and an attribute per '=' anywhere.
    let markup = |c: &str, n: usize| {
        let base = shaped(Shape::Nodes, 0).matches(c).count();
        let text = format!("<![CDATA[{}]]>", c.repeat(n - base));
        shaped(Shape::Nodes, 0).replace("<metadata>", &format!("<metadata>{text}"))
    };
    read(markup("=", MAX_MARKUP));
    refused(markup("=", MAX_MARKUP + 1), Limit::Markup);
    // The CDATA section's own '<' counts too.
    read(markup("<", MAX_MARKUP - 1));
    refused(markup("<", MAX_MARKUP), Limit::Markup);
    // Nodes: the document, the elements and the texts of the plain file, and a text
    // and an element for each `x<a/>` added (which stay within the markup limit).
    let nodes = |n: usize| {
        let base = roxmltree::Document::parse(&shaped(Shape::Nodes, 0))
            .unwrap()
            .descendants()
            .count();
        let body = "x<a/>".repeat((n - base) / 2) + if (n - base) % 2 == 1 { "x" } else { "" };
        shaped(Shape::Nodes, 0).replace("<metadata>", &format!("<metadata>{body}"))
    };
    read(nodes(MAX_NODES as usize));
    refused(nodes(MAX_NODES as usize + 1), Limit::Nodes);
    let len = shaped(Shape::HugeAttribute, 0).len();
    read(shaped(Shape::HugeAttribute, MAX_STATUS_FILE as usize - len));
    refused(
        shaped(Shape::HugeAttribute, MAX_STATUS_FILE as usize - len + 1),
        Limit::Size,
    );
}

/// Files as they come: not UTF-8, cut short, past the size limit (refused, not cut to
/// it), not a regular file.
#[test]
fn bad_files_on_disk() {
    let dir = std::env::temp_dir().join(format!("tw-libvirt-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good = shaped(Shape::Nodes, 0);
    // "wéb" in Latin-1.
    let mut latin1 = good.replace("web-1", "w@b").into_bytes();
    let at = latin1.iter().position(|&c| c == b'@').unwrap();
    latin1[at] = 0xe9;
    std::fs::write(dir.join("a-latin1.xml"), latin1).unwrap();
    std::fs::write(dir.join("b-cut.xml"), &good[..good.len() / 2]).unwrap();
    // A valid document followed by padding past the limit: cutting it at the limit
    // would read it.
    let padded = format!("{good}{}", " ".repeat(MAX_STATUS_FILE as usize));
    std::fs::write(dir.join("c-huge.xml"), padded).unwrap();
    std::fs::create_dir(dir.join("d-dir.xml")).unwrap();
    std::fs::write(dir.join("e-good.xml"), &good).unwrap();
    let (taps, errors) = scan_dir(&dir);
    let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(taps.len(), 1, "{msgs:?}");
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    assert!(
        msgs[0].contains("a-latin1.xml") && msgs[0].contains("UTF-8"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].contains("b-cut.xml") && msgs[1].contains("not valid XML"),
        "{msgs:?}"
    );
    assert!(
        msgs[2].contains("c-huge.xml") && msgs[2].contains("larger than 4194304 bytes"),
        "{msgs:?}"
    );
    assert!(msgs[3].contains("d-dir.xml"), "{msgs:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_libvirt_is_no_error() {
    let (taps, errors) = scan_dir(Path::new("/nonexistent/libvirt/qemu"));
    assert!(taps.is_empty() && errors.is_empty());
}
