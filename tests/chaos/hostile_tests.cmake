# Hostile peers and the valgrind run (tests/chaos/hostile_*.py). Included from
# tests/tls/CMakeLists.txt, and may also be included from this folder's
# CMakeLists.txt: the guard registers the tests once.
get_property(cn_hostile_done GLOBAL PROPERTY CN_HOSTILE_TESTS_ADDED)
if(NOT cn_hostile_done)
  set_property(GLOBAL PROPERTY CN_HOSTILE_TESTS_ADDED TRUE)
  set(cn_hostile_dir ${CMAKE_CURRENT_LIST_DIR})
  set(cn_hostile_bin ${CMAKE_BINARY_DIR}/bin)

  # Garbage, oversized messages and a 50-connection flood while loadgen agents
  # send; acked == sent, exactly once in the files, RSS within its bound. ~60 s.
  add_test(NAME chaos_hostile_agent
           COMMAND ${CN_PYTHON} ${cn_hostile_dir}/hostile_agent.py --bin ${cn_hostile_bin})
  # Also under ASan and UBSan (label sanitize): the RSS bound is then reported, not enforced.
  set_tests_properties(chaos_hostile_agent PROPERTIES LABELS "chaos;sanitize" TIMEOUT 150 RUN_SERIAL TRUE)

  # Reproduction of the nng 1.5.2 pipe reaper wedge (see the script); fails
  # until nng is upgraded, so it is off. Run it with ctest -R chaos_hostile_nng_wedge.
  add_test(NAME chaos_hostile_nng_wedge
           COMMAND ${CN_PYTHON} ${cn_hostile_dir}/hostile_nng_wedge.py --bin ${cn_hostile_bin})
  set_tests_properties(chaos_hostile_nng_wedge PROPERTIES LABELS "chaos" TIMEOUT 60 DISABLED TRUE)

  # The collector under valgrind on a small integration run, TLS included.
  find_program(CN_VALGRIND valgrind)
  add_test(NAME valgrind_collector
           COMMAND ${CN_PYTHON} ${cn_hostile_dir}/hostile_valgrind.py --bin ${cn_hostile_bin}
                   --valgrind "${CN_VALGRIND}")
  set_tests_properties(valgrind_collector PROPERTIES LABELS "valgrind" TIMEOUT 300 SKIP_RETURN_CODE 77)
endif()
