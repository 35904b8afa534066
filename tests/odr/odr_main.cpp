// ODR check: runs the functions of the two translation units that both include
// <softfree/softfree.hpp>.
#include <cstdio>

int odr_a();
int odr_b();

int main() {
  const int a = odr_a();
  const int b = odr_b();
  if (a != 0 || b != 0) {
    std::fprintf(stderr, "odr: odr_a() = %d, odr_b() = %d (expected 0 and 0)\n", a, b);
    return 1;
  }
  std::puts("odr OK");
  return 0;
}
