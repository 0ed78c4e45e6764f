package ddns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/windows"
)

// ipAdapterAddressDNSEligible is IP_ADAPTER_ADDRESS_DNS_ELIGIBLE: Windows
// registers the address in DNS. It does not register temporary ones.
const ipAdapterAddressDNSEligible = 0x01

// interfaceAddrs asks GetAdaptersAddresses for the adapter whose friendly
// name is ifi.Name (the name the net package uses). An IPv6 address with
// a random suffix that is not DNS-eligible counts as temporary; one whose
// duplicate address detection state is not "preferred" as unusable.
func interfaceAddrs(ifi *net.Interface) ([]ifaceAddr, error) {
	aas, err := adapterAddresses()
	if err != nil {
		return netAddrs(ifi)
	}
	for _, aa := range aas {
		if windows.UTF16PtrToString(aa.FriendlyName) != ifi.Name {
			continue
		}
		var out []ifaceAddr
		for ua := aa.FirstUnicastAddress; ua != nil; ua = ua.Next {
			ip := ua.Address.IP()
			a, ok := netip.AddrFromSlice(ip)
			if !ok {
				continue
			}
			a = a.Unmap()
			out = append(out, ifaceAddr{
				prefix: netip.PrefixFrom(a, int(ua.OnLinkPrefixLength)),
				temporary: a.Is6() && ua.SuffixOrigin == windows.IpSuffixOriginRandom &&
					ua.Flags&ipAdapterAddressDNSEligible == 0,
				unusable: ua.DadState != windows.IpDadStatePreferred,
			})
		}
		return out, nil
	}
	return nil, fmt.Errorf("no adapter named %q", ifi.Name)
}

// adapterAddresses calls GetAdaptersAddresses, growing the buffer as
// asked.
func adapterAddresses() ([]*windows.IpAdapterAddresses, error) {
	size := uint32(15000) // the size Microsoft recommends to start with
	for range 4 {
		buf := make([]byte, size)
		err := windows.GetAdaptersAddresses(syscall.AF_UNSPEC, 0, 0, (*windows.IpAdapterAddresses)(unsafe.Pointer(&buf[0])), &size)
		if err == nil {
			if size == 0 {
				return nil, nil
			}
			var aas []*windows.IpAdapterAddresses
			for aa := (*windows.IpAdapterAddresses)(unsafe.Pointer(&buf[0])); aa != nil; aa = aa.Next {
				aas = append(aas, aa)
			}
			return aas, nil
		}
		if !errors.Is(err, windows.ERROR_BUFFER_OVERFLOW) || size <= uint32(len(buf)) {
			return nil, os.NewSyscallError("getadaptersaddresses", err)
		}
	}
	return nil, errors.New("getadaptersaddresses: the adapter list keeps growing")
}
