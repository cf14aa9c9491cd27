# The configuration of one VM as JSON, stored with its backup as definition.json: what a restore
# needs to rebuild the VM (generation, processors, memory, network adapters, disks, firmware).
# A section that cannot be read is listed in Errors instead of failing the whole description.
# Args (ArgsJson): { VmId: guid }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $vm = Get-VmbVm $a
    $errors = New-Object System.Collections.Generic.List[string]

    $info = Get-VmbVmState $vm
    $info.Generation = [int]$vm.Generation
    $info.Version = [string]$vm.Version
    $info.Notes = [string]$vm.Notes
    $info.Path = [string]$vm.Path
    $info.ConfigurationLocation = [string]$vm.ConfigurationLocation
    $info.SnapshotFileLocation = [string](Get-VmbProp $vm 'SnapshotFileLocation')
    $info.SmartPagingFilePath = [string](Get-VmbProp $vm 'SmartPagingFilePath')
    $info.CheckpointType = [string](Get-VmbProp $vm 'CheckpointType')
    $info.AutomaticStartAction = [string]$vm.AutomaticStartAction
    $info.AutomaticStartDelay = [int]$vm.AutomaticStartDelay
    $info.AutomaticStopAction = [string]$vm.AutomaticStopAction
    $info.IsClustered = [bool]$vm.IsClustered
    $info.IntegrationServicesVersion = [string]$vm.IntegrationServicesVersion

    $processor = $null
    try {
        $p = Hyper-V\Get-VMProcessor -VM $vm
        $processor = [ordered]@{
            Count = [long]$p.Count; Reserve = [long]$p.Reserve; Maximum = [long]$p.Maximum; RelativeWeight = [long]$p.RelativeWeight
            CompatibilityForMigrationEnabled = [bool]$p.CompatibilityForMigrationEnabled
            ExposeVirtualizationExtensions = [bool](Get-VmbProp $p 'ExposeVirtualizationExtensions')
        }
    } catch { $errors.Add('Get-VMProcessor: ' + $_.Exception.Message) }

    $memory = $null
    try {
        $m = Hyper-V\Get-VMMemory -VM $vm
        $memory = [ordered]@{
            Startup = [long]$m.Startup; DynamicMemoryEnabled = [bool]$m.DynamicMemoryEnabled
            Minimum = [long]$m.Minimum; Maximum = [long]$m.Maximum; Buffer = [long]$m.Buffer; Priority = [long]$m.Priority
        }
    } catch { $errors.Add('Get-VMMemory: ' + $_.Exception.Message) }

    $adapters = @()
    try {
        $adapters = @(Hyper-V\Get-VMNetworkAdapter -VM $vm | Where-Object { $null -ne $_ } | ForEach-Object {
            $n = $_
            $vlan = $null
            try {
                $v = Hyper-V\Get-VMNetworkAdapterVlan -VMNetworkAdapter $n
                $vlan = [ordered]@{ OperationMode = [string]$v.OperationMode; AccessVlanId = [long]$v.AccessVlanId }
            } catch { }
            [ordered]@{
                Name = [string]$n.Name; Id = [string]$n.Id; SwitchName = [string]$n.SwitchName; MacAddress = [string]$n.MacAddress
                DynamicMacAddressEnabled = [bool]$n.DynamicMacAddressEnabled; IsLegacy = [bool]$n.IsLegacy
                IPAddresses = @(ConvertTo-VmbStringArray $n.IPAddresses); Vlan = $vlan
            }
        })
    } catch { $errors.Add('Get-VMNetworkAdapter: ' + $_.Exception.Message) }

    $drives = @()
    try { $drives = @(Get-VmbDrives $vm) } catch { $errors.Add('Get-VMHardDiskDrive: ' + $_.Exception.Message) }
    $vhds = New-Object System.Collections.Generic.List[object]
    foreach ($d in $drives) { if ($null -eq $d.DiskNumber -and $d.Path) { $vhds.Add((Get-VmbVhd $d.Path)) } }

    $dvds = @()
    try {
        $dvds = @(Hyper-V\Get-VMDvdDrive -VM $vm | Where-Object { $null -ne $_ } | ForEach-Object {
            [ordered]@{ ControllerType = [string]$_.ControllerType; ControllerNumber = [int]$_.ControllerNumber; ControllerLocation = [int]$_.ControllerLocation; Path = [string]$_.Path }
        })
    } catch { $errors.Add('Get-VMDvdDrive: ' + $_.Exception.Message) }

    $firmware = $null
    try {
        if ([int]$vm.Generation -eq 2) {
            $f = Hyper-V\Get-VMFirmware -VM $vm
            $firmware = [ordered]@{
                Type = 'UEFI'; SecureBoot = [string]$f.SecureBoot; SecureBootTemplate = [string](Get-VmbProp $f 'SecureBootTemplate')
                PreferredNetworkBootProtocol = [string]$f.PreferredNetworkBootProtocol
            }
        } else {
            $b = Hyper-V\Get-VMBios -VM $vm
            $firmware = [ordered]@{ Type = 'BIOS'; StartupOrder = @(ConvertTo-VmbStringArray $b.StartupOrder); NumLockEnabled = [bool]$b.NumLockEnabled }
        }
    } catch { $errors.Add('firmware: ' + $_.Exception.Message) }

    $services = @()
    try {
        $services = @(Hyper-V\Get-VMIntegrationService -VM $vm | Where-Object { $null -ne $_ } | ForEach-Object { [ordered]@{ Name = [string]$_.Name; Id = [string]$_.Id; Enabled = [bool]$_.Enabled } })
    } catch { $errors.Add('Get-VMIntegrationService: ' + $_.Exception.Message) }

    $checkpoints = @()
    try { $checkpoints = @(Get-VmbCheckpoints $vm | ForEach-Object { Get-VmbCheckpointInfo $_ }) } catch { $errors.Add('Get-VMSnapshot: ' + $_.Exception.Message) }

    $out = [ordered]@{
        VM = $info; Processor = $processor; Memory = $memory; NetworkAdapters = @($adapters)
        HardDrives = @($drives); Vhds = @($vhds.ToArray()); DvdDrives = @($dvds); Firmware = $firmware
        IntegrationServices = @($services); Checkpoints = @($checkpoints); Errors = @($errors.ToArray())
    }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
