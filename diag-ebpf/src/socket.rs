//! ARP and RARP the host receives from the VMs on taps of the drop-driven datapath. The
//! program filters two packet sockets bound to those ethertypes (so it runs for nothing
//! else, ARP being rare); it counts and reports through the same observe step as the tc
//! probes and always returns 0: the sockets never queue a frame, and the frame goes on to
//! the kernel's own ARP handling untouched.

use aya_ebpf::{bindings::__sk_buff, macros::socket_filter, programs::SkBuffContext};
use diag_common::{lost_vlan_tag, Direction, TapMode, PACKET_OTHERHOST};

use crate::skb::{load_prefix, on_frame, Skb};

/// `pkt_type` of a frame the host sends: protocol sockets do not see them, but say so.
const PACKET_OUTGOING: u32 = 4;

#[socket_filter]
pub fn tap_arp(ctx: SkBuffContext) -> i64 {
    let mut skb = Skb::read(ctx.skb.skb as *const __sk_buff);
    if skb.pkt_type == PACKET_OUTGOING {
        return 0;
    }
    // Taps with the full tc probe count their ARP there.
    let Some(tap) = skb.tap().filter(|t| t.is(TapMode::Drops)) else {
        return 0;
    };
    // By now the stack has taken a VLAN tag off (its id is gone) and marked a tagged
    // frame OTHERHOST on a tap without a VLAN device; `on_frame` still checks the
    // destination is unicast. The tag's bytes still count in the frame's length.
    let otherhost = skb.pkt_type == PACKET_OTHERHOST;
    let mut head = [0u8; 16];
    let n = load_prefix(skb.ptr, &mut head, skb.len);
    skb.vlan_lost = lost_vlan_tag(&head[..n], otherhost);
    on_frame(&ctx, &skb, tap, Direction::FromVm, otherhost, false);
    0
}
