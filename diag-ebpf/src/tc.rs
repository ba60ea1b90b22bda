//! The per-frame tc probes. They never drop, redirect or modify a frame: all return
//! `TC_ACT_UNSPEC`, which in TCX means "next program" and in a clsact direct-action filter
//! "continue", so whatever else is attached still runs. Frames that cannot matter leave
//! after a few loads from the context: frame and byte totals come from the link's own
//! statistics, so the probes count only what they judge.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use diag_common::{
    ipv6_needs_body, Direction, ETH_P_IPV6, PACKET_HOST, PACKET_MULTICAST, PACKET_OTHERHOST,
};

use crate::{
    maps,
    skb::{on_frame, Skb},
};

/// Frames the VM writes into the tap (tc ingress on the host side), on taps that carry
/// the full probe: bridged taps, and every tap with `--datapath tc`.
#[classifier]
pub fn tap_ingress(ctx: TcContext) -> i32 {
    let skb = Skb::read(ctx.skb.skb as *const __sk_buff);
    let foreign = skb.pkt_type == PACKET_OTHERHOST;
    // Broadcasts and multicasts of IPv4 and the like never matter; a frame to the tap's own
    // MAC matters only while a mismatch window is open (it ends it, unless it is neighbour
    // discovery, which only its bytes tell); IPv6 to a group may be neighbour discovery.
    // The hint says whether a window may be open before the tap is looked up.
    let own_hinted = skb.pkt_type == PACKET_HOST && maps::hinted(skb.ifindex);
    let group = skb.pkt_type == PACKET_MULTICAST;
    let may_matter = !skb.header_only()
        || foreign
        || own_hinted
        || ipv6_needs_body(skb.protocol, group, foreign, false);
    if !may_matter {
        return TC_ACT_UNSPEC;
    }
    let Some(tap) = skb.tap() else {
        return TC_ACT_UNSPEC;
    };
    let own_open = own_hinted && maps::window_open(tap.id);
    let ipv6_body = ipv6_needs_body(skb.protocol, group, foreign, own_open);
    if !skb.header_only() || foreign || own_open || ipv6_body {
        on_frame(&ctx, &skb, tap, Direction::FromVm, foreign, ipv6_body);
    }
    TC_ACT_UNSPEC
}

/// Frames the host sends to the VM (tc egress on the host side): ARP, RARP and tagged
/// frames can be notable, and after a RARP from the VM the first data frame (read whole,
/// to tell data from neighbour discovery) while the tap's hint says one is awaited.
#[classifier]
pub fn tap_egress(ctx: TcContext) -> i32 {
    let skb = Skb::read(ctx.skb.skb as *const __sk_buff);
    let hinted = maps::hinted(skb.ifindex);
    // The host's router advertisements and solicitations go to groups; its unicast
    // neighbour discovery is read only while a data frame is awaited. Only IPv6 frames pay
    // for the look at their destination.
    let group_nd = || skb.protocol == ETH_P_IPV6 && to_group(&ctx);
    let may_matter = !skb.header_only() || hinted || group_nd();
    if !may_matter {
        return TC_ACT_UNSPEC;
    }
    let Some(tap) = skb.tap() else {
        return TC_ACT_UNSPEC;
    };
    // The hint's slot may be another namespace's tap's: this one's own state decides.
    let awaited = hinted && maps::pending(tap.id);
    let nd = !awaited && group_nd();
    if !skb.header_only() || awaited || nd {
        on_frame(&ctx, &skb, tap, Direction::ToVm, false, awaited || nd);
    }
    TC_ACT_UNSPEC
}

/// Whether the frame's destination MAC is a group address (egress frames carry no
/// pkt_type that says it): one byte read with the helper, which checks the bounds itself.
#[inline(always)]
fn to_group(ctx: &TcContext) -> bool {
    matches!(ctx.load::<u8>(0), Ok(b) if b & 1 == 1)
}

/// The per-frame probe a tap of the drop-driven datapath gets while stale frames may end:
/// it times the first frame from the VM to the tap's own MAC after them, to the frame, and
/// names the VM's neighbour discovery to groups. It looks at nothing else (the drop
/// program counts the stale frames, the socket filter the ARP), so no frame is counted
/// twice.
#[classifier]
pub fn tap_ingress_assist(ctx: TcContext) -> i32 {
    let skb = Skb::read(ctx.skb.skb as *const __sk_buff);
    let own_hinted = skb.pkt_type == PACKET_HOST && maps::hinted(skb.ifindex);
    // The guest's router solicitations and announcing advertisements go to groups and are
    // neither dropped nor seen by the ARP socket: counted here while the tap is probed.
    let group = skb.pkt_type == PACKET_MULTICAST;
    if !skb.header_only() || !(own_hinted || ipv6_needs_body(skb.protocol, group, false, false)) {
        return TC_ACT_UNSPEC;
    }
    let Some(tap) = skb.tap() else {
        return TC_ACT_UNSPEC;
    };
    let own_open = own_hinted && maps::window_open(tap.id);
    let ipv6_body = ipv6_needs_body(skb.protocol, group, false, own_open);
    if own_open || ipv6_body {
        on_frame(&ctx, &skb, tap, Direction::FromVm, false, ipv6_body);
    }
    TC_ACT_UNSPEC
}
