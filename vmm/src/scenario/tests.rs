//! Tests of the scenario vocabulary and its validation.

use super::*;

fn base() -> Scenario {
    toml::from_str("").unwrap()
}

#[test]
fn defaults_validate() {
    base().validate().unwrap();
}

/// A value with line breaks and other control characters is quoted escaped, so the error is
/// one line (libFuzzer's `config` target, input kept as `tests/fuzz-regressions/config/
/// vfio-value-newlines.bin`). A bug: the raw value in the message, breaking "one line that
/// names the file and key".
#[test]
fn a_quoted_value_with_line_breaks_stays_on_one_line() {
    let mut s = base();
    s.device.pin = PinKind::Vfio;
    s.device.vfio = Some("00\n00:01\r\t\u{7}:00".into());
    let e = s.validate().unwrap_err();
    assert_eq!(e.key, "device.vfio");
    assert!(!e.reason.chars().any(char::is_control), "{:?}", e.reason);
    assert!(
        e.reason.contains("00\\n00:01\\r\\t\\u{7}:00"),
        "{}",
        e.reason
    );
}

/// A fuzz scenario parses with its seed and op count, and only fuzz mode sends ops. A bug:
/// a DMA run told to send hostile operations, or a fuzz run with none.
#[test]
fn fuzz_mode_counts_its_ops() {
    let s: Scenario =
        toml::from_str("[workload]\nmode = \"fuzz\"\nops = 20000\nseed = 7\n").unwrap();
    s.validate().unwrap();
    assert_eq!((s.workload.fuzz_ops(), s.workload.seed), (20_000, Some(7)));
    let mut d: Scenario = toml::from_str("[workload]\nmode = \"fuzz\"\n").unwrap();
    assert_eq!(d.workload.fuzz_ops(), DEFAULT_FUZZ_OPS);
    d.workload.mode = GuestMode::Dma;
    assert_eq!(d.workload.fuzz_ops(), 0);
}

/// Both orders parse from their names, and ksm-shadow after ksm is fine in pinned-first
/// order (this process is on KSM's list first either way).
#[test]
fn ksm_order_parses_and_validates() {
    for (text, order) in [
        ("pinned-first", KsmOrder::PinnedFirst),
        ("shadow-first", KsmOrder::ShadowFirst),
    ] {
        let s: Scenario = toml::from_str(&format!(
            "[perturb]\nactions = [\"ksm-shadow\"]\nksm_order = \"{text}\"\n[expect]\nlive = \"coherent\"\n"
        ))
        .unwrap();
        assert_eq!(s.perturb.ksm_order, order);
        assert_eq!(order.to_string(), text);
        s.validate().unwrap();
    }
    let mut s = base();
    s.perturb.actions = vec![Action::Ksm, Action::KsmShadow];
    s.expect.live = Some(Verdict::Coherent);
    s.validate().unwrap();
    assert!(toml::from_str::<Scenario>("[perturb]\nksm_order = \"last\"\n").is_err());
}

#[test]
fn names_round_trip() {
    for a in Action::ALL {
        assert_eq!(a.name().parse::<Action>().unwrap(), a);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{}\"", a.name()));
    }
    for k in MemoryKind::ALL {
        assert_eq!(k.name().parse::<MemoryKind>().unwrap(), k);
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            format!("\"{}\"", k.name())
        );
    }
    let s: Scenario = toml::from_str("[vm]\nmemory_kind = \"pte-mapped-thp\"\n").unwrap();
    assert_eq!(s.vm.memory_kind(), MemoryKind::PteMappedThp);
    s.validate().unwrap();
    let s: Scenario = toml::from_str("[vm]\nthp = false\n").unwrap();
    assert_eq!(s.vm.memory_kind(), MemoryKind::Small);
    for k in PinKind::ALL.into_iter().chain([PinKind::Vfio]) {
        assert_eq!(k.name().parse::<PinKind>().unwrap(), k);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("\"{}\"", k.name()));
    }
}

/// Every accepted form of `[device] vfio` validates with `pin = "vfio"`; a bug would refuse
/// a form the docs promise (the config error would blame `device.vfio`).
#[test]
fn vfio_device_forms_validate() {
    for dev in [
        "0000:01:00.0",
        "01:00.0",
        "0001:ff:1f.7",
        "/dev/vfio/12",
        "/dev/vfio/devices/vfio0",
    ] {
        let s: Scenario =
            toml::from_str(&format!("[device]\npin = \"vfio\"\nvfio = \"{dev}\"\n")).unwrap();
        s.validate().unwrap_or_else(|e| panic!("{dev}: {e}"));
    }
}

/// Each row: what to change, the key that must be blamed.
#[test]
fn validation_blames_the_key() {
    type Edit = fn(&mut Scenario);
    let rows: &[(&str, Edit, &str)] = &[
        (
            "queue depth 0",
            |s| s.device.queue_depth = 0,
            "device.queue_depth",
        ),
        (
            "queue depth past the ring",
            |s| s.device.queue_depth = MAX_QUEUE_DEPTH + 1,
            "device.queue_depth",
        ),
        (
            "too little RAM",
            |s| s.vm.memory = ByteSize::mib(4),
            "vm.memory",
        ),
        (
            "RAM not 2 MiB granular",
            |s| s.vm.memory = ByteSize::mib(65),
            "vm.memory",
        ),
        (
            "RAM over 4 GiB",
            |s| s.vm.memory = ByteSize::gib(5),
            "vm.memory",
        ),
        (
            "region not page granular",
            |s| s.workload.region = ByteSize(4097),
            "workload.region",
        ),
        (
            "empty region",
            |s| s.workload.region = ByteSize(0),
            "workload.region",
        ),
        (
            "offset past the huge page",
            |s| s.workload.region_offset = ByteSize::mib(2),
            "workload.region_offset",
        ),
        (
            "region past RAM",
            |s| s.workload.region = ByteSize::mib(64),
            "workload.region",
        ),
        ("zero rounds", |s| s.workload.rounds = 0, "workload.rounds"),
        (
            "fuzz with zero rounds",
            |s| {
                s.workload.mode = GuestMode::Fuzz;
                s.workload.rounds = 0;
            },
            "workload.rounds",
        ),
        (
            "fuzz with zero ops",
            |s| {
                s.workload.mode = GuestMode::Fuzz;
                s.workload.ops = Some(0);
            },
            "workload.ops",
        ),
        (
            "fuzz with more ops than a run may send",
            |s| {
                s.workload.mode = GuestMode::Fuzz;
                s.workload.ops = Some(MAX_FUZZ_OPS + 1);
            },
            "workload.ops",
        ),
        (
            "ops outside fuzz mode",
            |s| s.workload.ops = Some(10),
            "workload.ops",
        ),
        (
            "small pages with THP on",
            |s| s.vm.memory_kind = Some(MemoryKind::Small),
            "vm.memory_kind",
        ),
        (
            "PTE-mapped THP without THP",
            |s| {
                s.vm.thp = false;
                s.vm.memory_kind = Some(MemoryKind::PteMappedThp);
            },
            "vm.memory_kind",
        ),
        (
            "PTE-mapped THP without prefault",
            |s| {
                s.vm.prefault = false;
                s.vm.memory_kind = Some(MemoryKind::PteMappedThp);
            },
            "vm.memory_kind",
        ),
        (
            "action after the last round",
            |s| {
                s.perturb.actions = vec![Action::Dontneed];
                s.perturb.after_round = 101;
                s.expect.live = Some(Verdict::Diverged);
            },
            "perturb.after_round",
        ),
        (
            "vmsplice cannot write",
            |s| {
                s.device.pin = PinKind::Vmsplice;
                s.workload.directions = Directions::ToGuest;
            },
            "workload.directions",
        ),
        (
            "vfio without a device",
            |s| s.device.pin = PinKind::Vfio,
            "device.vfio",
        ),
        (
            "vfio with a bad PCI address",
            |s| {
                s.device.pin = PinKind::Vfio;
                s.device.vfio = Some("0000:01:00".into());
            },
            "device.vfio",
        ),
        (
            "vfio with a PCI function past 7",
            |s| {
                s.device.pin = PinKind::Vfio;
                s.device.vfio = Some("0000:01:00.8".into());
            },
            "device.vfio",
        ),
        (
            "a VFIO device without pin = vfio",
            |s| s.device.vfio = Some("0000:01:00.0".into()),
            "device.vfio",
        ),
        (
            "perturbed live scenario without expectation",
            |s| s.perturb.actions = vec![Action::Compact],
            "expect.live",
        ),
        (
            "ksm_order without ksm-shadow",
            |s| s.perturb.ksm_order = KsmOrder::ShadowFirst,
            "perturb.ksm_order",
        ),
        (
            "ksm-shadow twice",
            |s| {
                s.perturb.actions = vec![Action::KsmShadow, Action::KsmShadow];
                s.expect.live = Some(Verdict::Coherent);
            },
            "perturb.actions",
        ),
        (
            "ksm-shadow in a storm",
            |s| {
                s.perturb.actions = vec![Action::KsmShadow];
                s.perturb.storm = 3;
                s.expect.live = Some(Verdict::Coherent);
            },
            "perturb.storm",
        ),
        (
            "ksm-shadow over a region the helper will not copy",
            |s| {
                s.vm.memory = ByteSize::mib(256);
                s.workload.region = ByteSize::mib(128);
                s.perturb.actions = vec![Action::KsmShadow];
                s.expect.live = Some(Verdict::Coherent);
            },
            "workload.region",
        ),
        (
            "shadow-first after this process entered KSM",
            |s| {
                s.perturb.actions = vec![Action::Ksm, Action::KsmShadow];
                s.perturb.ksm_order = KsmOrder::ShadowFirst;
                s.expect.live = Some(Verdict::Coherent);
            },
            "perturb.ksm_order",
        ),
    ];
    for (what, edit, key) in rows {
        let mut s = base();
        edit(&mut s);
        let err = s.validate().expect_err(what);
        assert_eq!(err.key, *key, "{what}: {err}");
    }
}
