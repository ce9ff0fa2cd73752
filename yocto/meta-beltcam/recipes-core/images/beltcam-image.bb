SUMMARY = "A minimal bootable image that runs beltcam"
DESCRIPTION = "core-image-minimal plus beltcam, its systemd units and kernel modules for USB/CSI \
cameras. To add beltcam to an existing image instead: IMAGE_INSTALL:append = \" beltcam\"."
LICENSE = "MIT"

inherit core-image features_check

# beltcam runs as a systemd unit (Type=notify, watchdog). poky defaults to sysvinit, so the build's
# local.conf or distro must say INIT_MANAGER = "systemd" (the kas files in yocto/kas do).
REQUIRED_DISTRO_FEATURES = "systemd"

IMAGE_INSTALL = " \
    packagegroup-core-boot \
    ${CORE_IMAGE_EXTRA_INSTALL} \
    beltcam \
    kernel-modules \
"
# kernel-modules: uvcvideo (USB cameras) and the CSI drivers are modules on the Raspberry Pi and
# Jetson kernels; core-image-minimal would leave them out.

# Reach the box without a console.
IMAGE_FEATURES += "ssh-server-dropbear"
