# Runs at install time (cmake --install, and CPack's install into its staging
# directory), after DIGESTD_SOURCE_DIR and DIGESTD_STAGE_DIR are set, so the
# unit names the binary and the config file of the prefix being installed,
# whatever prefix the build was configured with.
#
# The config file goes to /etc/digestd for prefix /usr and to PREFIX/etc/digestd
# otherwise (as GNUInstallDirs places sysconfdir). An existing config file
# that differs from the shipped one is someone's edited config: it is kept,
# and the shipped file is installed beside it as digestd.conf.new. (The Debian
# package protects it as a conffile instead; CPack's staging tree never has
# one.)
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(etc_dir /etc)
else()
  set(etc_dir "${CMAKE_INSTALL_PREFIX}/etc")
endif()
set(DIGESTD_BINDIR "${CMAKE_INSTALL_PREFIX}/bin")
set(DIGESTD_CONFIG_FILE "${etc_dir}/digestd/digestd.conf")

configure_file("${DIGESTD_SOURCE_DIR}/systemd/digestd.service.in"
               "${DIGESTD_STAGE_DIR}/digestd.service" @ONLY)
file(INSTALL DESTINATION "${CMAKE_INSTALL_PREFIX}/lib/systemd/system" TYPE FILE
     FILES "${DIGESTD_STAGE_DIR}/digestd.service" "${DIGESTD_SOURCE_DIR}/systemd/digestd.socket")

set(shipped "${DIGESTD_SOURCE_DIR}/conf/digestd.conf")
set(existing "$ENV{DESTDIR}${DIGESTD_CONFIG_FILE}")
set(conf_name digestd.conf)
if(EXISTS "${existing}")
  file(SHA256 "${existing}" existing_sum)
  file(SHA256 "${shipped}" shipped_sum)
  if(NOT existing_sum STREQUAL shipped_sum)
    set(conf_name digestd.conf.new)
    message(STATUS "Keeping the edited ${existing}; the shipped config is "
                   "${existing}.new (compare them: diff ${existing} ${existing}.new)")
  endif()
endif()
file(INSTALL DESTINATION "${etc_dir}/digestd" TYPE FILE RENAME ${conf_name} FILES "${shipped}")
