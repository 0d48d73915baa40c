// Lower bounds on squared distances from the rows' norms and inner products, used by DBSCAN to
// prove that a row has no neighbour in a tile without computing the tile. Pure functions of a
// few fp64 numbers (the callers add the rounding slack of the fp32 / bf16 products they feed
// in); tests/cpp/test_core.cpp checks them against brute force on configurations where they
// are tight.
//
// For rows x and y and any vector c,
//     x . y = (x - c) . y + c . y <= ||x - c|| ||y|| + c . y        (Cauchy-Schwarz)
//     ||x - y||^2 = ||x||^2 + ||y||^2 - 2 x . y.
// Unlike the triangle inequality on balls, this keeps the norms: on the sphere (cosine, or
// normalised embeddings) a row far from every cluster and a cluster's tile are proven apart
// even when the tile's ball reaches within eps of the row.
#pragma once

#include <algorithm>

namespace ec {

/// min over t in [lo, hi] (0 <= lo <= hi) of t^2 - 2 r t: the terms ||y||^2 - 2 r ||y|| at their
/// smallest over the norms a tile's rows can have. Non-increasing in r.
inline double norm_term(double r, double lo, double hi) {
  const double t = std::min(std::max(r, lo), hi);
  return t * t - 2.0 * r * t;
}

/// Lower bound on ||x - y||^2 for every y with ||y - c|| <= r_tile and ||y|| >= y_min, from
/// x . c (c: the tile's centre): x . y <= x . c + ||x|| r_tile.
inline double sq_lower_by_tile_centre(double x_sq, double x_norm, double x_dot_c, double r_tile, double y_min) {
  return x_sq + y_min * y_min - 2.0 * (x_dot_c + x_norm * r_tile);
}

/// Lower bound on ||x - y||^2 for every y with y . c <= y_dot_c_max and y_min <= ||y|| <= y_max,
/// where ||x - c|| <= x_to_c (c: the centre of x's own tile): x . y <= x_to_c ||y|| + y . c.
inline double sq_lower_by_own_centre(double x_sq, double x_to_c, double y_min, double y_max, double y_dot_c_max) {
  return x_sq + norm_term(x_to_c, y_min, y_max) - 2.0 * y_dot_c_max;
}

}  // namespace ec
